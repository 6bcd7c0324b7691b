"""Several teachers, and the student as its own teacher: `teacher.sources`.

    teacher:
      sources:
        - {name: smollm, model: default, weight: 0.7}
        - {name: smollm4, model: default, load_in: 4bit, weight: 0.3}
        - {name: big, cache: runs/big-teacher-cache, weight: 0.5}   # a `kdistill cache` of another teacher
        - {name: ema, kind: ema, update_rate: 0.01, every: 1}
      combine: sum            # or route (each example to the teacher named by its `teacher.route_key` field)

Weights are normalised to sum to 1. `sum`: every teacher loss term is the weighted sum over teachers
(for forward KL exactly distilling the weighted mixture, for reverse KL the geometric one: see
`losses/mixture.py`); `route`: each example is scored by its own teacher only, one loss call per group,
its tokens counted once. Without `student.tokenizer` all teachers share the student's tokenizer; with a
cache among them every teacher scores the cache's tokens (caches must hold the same token ids; route
needs live models). Held-out metrics are logged against each teacher (`eval_<name>_kl`) and, for `sum`
over live models of one tokenizer, against their mixture (`eval_mixture_kl`). One entry with weight 1 is
the plain single teacher, bit for bit.

Teachers with other tokenizers (`student.tokenizer=SPEC`: the student reads SPEC's tokenizer): a teacher
whose tokenizer differs from the student's is read through its own (`cross.CrossTokenizerSource`, named),
one sharing it keeps its exact token-level signal. Every record is read by the student's tokenizer and
each teacher's (`cross.render_aligned`), so every teacher can score every example; a batch holds each
such teacher's side under "NAME/KEY". The signal is a `Mixture` whose parts are in their own forms (dense
on the student's vocabulary, or a `CrossSignal` per aligned group): `losses/mixture.mixed_loss` adds
each teacher's loss with its weight under one token count. Held-out metrics against such a teacher are
the per-group and per-byte ones of one cross-tokenizer teacher (`evaluation/cross_metrics.py`). The
student starts from the first model in teacher.sources.
"""
from __future__ import annotations

import contextlib

import torch

from kdistill.base.errors import ConfigError, DataError, ModelError
from kdistill.cache import manifest as M
from kdistill.config.sources import source_entries
from kdistill.data import batches as batching
from kdistill.data.load import load_examples
from kdistill.losses.mixture import Mixture, MixtureDistribution, Part
from kdistill.losses.signals import GROUPS
from kdistill.models.activations import capture
from kdistill.sources.base import no_activations
from kdistill.sources.cached import CacheSource, init_teacher, open_for_training
from kdistill.sources.cross import CrossTokenizerSource, load_student_tokenizer, render_aligned, teacher_side
from kdistill.sources.ema import EmaSource
from kdistill.sources.model import ModelSource


def _where(child) -> str:
    return child.spec if isinstance(child, ModelSource) else f"cache {child.cache.folder}"


def _live(child) -> bool:
    """A teacher model of its own (read through the student's tokenizer or its own)."""
    return isinstance(child, (ModelSource, CrossTokenizerSource))


def _aligned(child, student_tok, spec: str):
    """A model whose tokenizer is not the student's, read through its own; any other child as it is."""
    if isinstance(child, ModelSource) and M.tokenizer_fingerprint(child.tokenizer) != M.tokenizer_fingerprint(
            student_tok):
        return CrossTokenizerSource(child, student_tok, spec, name=child.against)
    return child


def route_index(record, key: str, names: list[str], where: str) -> int:
    """The index of the teacher a record's `key` field names; DataError naming the record."""
    value = record.get(key)
    if value not in names:
        raise DataError(f"{where}: field '{key}' is {value!r}; teacher.combine=route needs it to "
                        f"name one of teacher.sources: {', '.join(names)}")
    return names.index(value)


def _cache_child(entry: dict, cfg) -> CacheSource:
    """A cache in teacher.sources: verified and checked against the run like teacher.cache."""
    import copy

    own = copy.deepcopy(cfg)
    own.teacher.cache = entry["cache"]
    child = CacheSource(open_for_training(own), None, None, False)
    child.against, child.signal_key = entry["name"], f"signal:{entry['name']}"
    return child


def _load_child(entry: dict, cfg, device, dtype) -> ModelSource:
    from kdistill.models.teacher import load_teacher

    t = cfg.teacher
    model, tokenizer, folder = load_teacher(
        entry["model"], device, dtype, t.trust_remote_code, entry.get("load_in", t.load_in),
        max_memory=entry.get("max_memory", t.max_memory), offload_dir=entry.get("offload_dir", t.offload_dir),
        allow_pickle=t.allow_pickle)
    source = ModelSource(model, tokenizer, folder, entry["model"])
    source.against = entry["name"]
    return source


class MultiSource:
    """Several named sources combined by `sum` or `route`; itself a source like any other."""

    prefetch = 0
    can_score_new_text = True
    static = False  # an ema child changes; references are evaluated one by one

    def __init__(self, children: list, weights: list[float], combine: str, route_key: str | None, init_model,
                 tokenizer=None):
        """`tokenizer`: the student's own (`student.tokenizer`): every record is read by it and by each
        teacher's; None: the first model's, shared by all."""
        self.children, self.weights, self.combine, self.route_key = children, weights, combine, route_key
        self.init_model, self._init = init_model, init_model
        live = [c for c in children if _live(c)]
        self._init_folder = getattr(live[0], "inner", live[0]).folder if live else ""
        self.own_tokenizer, self.copy_embeddings = tokenizer, False
        self.tokenizer = tokenizer if tokenizer is not None else live[0].tokenizer if live else None
        self.can_score_new_text = not any(isinstance(c, CrossTokenizerSource) for c in children)
        self.against = "mixture"

    @classmethod
    def open(cls, cfg, device, dtype) -> "MultiSource":
        entries = source_entries(cfg.teacher)  # checked by the config
        makers = {"model": lambda e: _load_child(e, cfg, device, dtype), "cache": lambda e: _cache_child(e, cfg),
                  "ema": lambda e: EmaSource(e["name"], e["update_rate"], e["every"])}
        children = [makers[e["kind"]](e) for e in entries]
        own = None
        if cfg.student.tokenizer:  # the student's own tokenizer: a teacher with another is read through its own
            own = load_student_tokenizer(cfg.student.tokenizer)
            children = [_aligned(c, own, cfg.student.tokenizer) for c in children]
        models = [c for c in children if _live(c)]
        caches = [c for c in children if isinstance(c, CacheSource)]
        init, folder = (models[0].init_model, getattr(models[0], "inner", models[0]).folder) if models \
            else (None, "")
        if not models and caches:  # only caches (and ema): initialise as a single cache would
            init, folder, _ = init_teacher(caches[0].cache, cfg, device, dtype)
        elif not models:
            init_source = ModelSource.load(cfg, device, dtype)  # for the student's initialisation only
            init, folder = init_source.model, init_source.folder
            for c in children:
                c.tokenizer = init_source.tokenizer
        source = cls(children, [e["weight"] for e in entries], cfg.teacher.combine, cfg.teacher.route_key, init,
                     own)
        source._init_folder = folder  # teacher-written data is keyed by the teacher that wrote it
        if own is not None and models:  # the student's embeddings: rows of matching strings from its first teacher
            copy = cfg.student.kind == "llama" and cfg.student.init == "teacher"
            if isinstance(models[0], CrossTokenizerSource):
                models[0].copy_embeddings = copy
            else:
                source.copy_embeddings = copy
        if source.tokenizer is None:
            source.tokenizer = next(c.tokenizer for c in children if c.tokenizer is not None)
        source._check_tokenizers()
        return source

    def _check_tokenizers(self) -> None:
        named = [c for c in self.children if isinstance(c, (ModelSource, CacheSource))]
        first = M.tokenizer_fingerprint(named[0].tokenizer) if named else None
        for c in named[1:]:
            if M.tokenizer_fingerprint(c.tokenizer) != first:
                raise ModelError(f"teacher.sources: {c.against} ({_where(c)}) has another tokenizer than "
                                 f"{named[0].against} ({_where(named[0])}); set student.tokenizer (e.g. to "
                                 f"{_where(named[0])}) so that the student reads one tokenizer and every teacher "
                                 "with another is aligned to it (cross-tokenizer distillation, combine sum or route)")
        caches = [c for c in self.children if isinstance(c, CacheSource)]
        for c in caches[1:]:
            if c.cache.manifest["data"]["sha256"] != caches[0].cache.manifest["data"]["sha256"]:
                raise ConfigError(f"teacher.sources: caches {caches[0].against} and {c.against} hold other token "
                                  "ids (written over other data); write both caches from the same data settings")

    @property
    def vocab_size(self) -> int:
        if self.own_tokenizer is not None:
            return len(self.own_tokenizer)
        if self._init is not None:
            return int(self._init.get_output_embeddings().weight.shape[0])
        return getattr(self, "_vocab", None) or self.children[0].vocab_size

    def load_examples(self, cfg, device) -> list[dict]:
        if self.own_tokenizer is not None:
            return self._aligned_examples(cfg)
        caches = [c for c in self.children if isinstance(c, CacheSource)]
        if caches:  # every teacher scores the cached tokens; each cache keeps its own signal by index
            if self.combine == "route":
                raise ConfigError("teacher.combine=route with a cache in teacher.sources is not supported: a cache "
                                  "holds no data fields; use combine=sum, or route live models")
            return [{**e, "index": i} for i, e in enumerate(caches[0].cache.examples)]
        if self.combine != "route":
            return load_examples(cfg, self._init, self.tokenizer, self._init_folder, device)
        from kdistill.data.files import read_records
        from kdistill.data.render import render

        names = [c.against for c in self.children]
        groups: dict[int, list] = {}
        for r in read_records(cfg.data.path, cfg.data.split, cfg.data.max_records):
            groups.setdefault(route_index(r, self.route_key, names, getattr(r, "origin", cfg.data.path)), []).append(r)
        examples = []
        for index, records in sorted(groups.items()):
            for e in render(records, self.tokenizer, cfg.train.seq_len, cfg.data.format, cfg.data.text_field,
                            cfg.data.path):
                examples.append({**e, "route": index})
        return examples

    def _aligned_examples(self, cfg) -> list[dict]:
        """Every record read by the student's tokenizer and each other teacher's (`cross.render_aligned`)."""
        from kdistill.data.files import read_records
        from kdistill.data.render import detect_format

        records = read_records(cfg.data.path, cfg.data.split, cfg.data.max_records)
        fmt, names = detect_format(records, cfg.data.format), [c.against for c in self.children]
        teachers = {c.name: (c.teacher_tokenizer, c.teacher_limit(cfg.train.seq_len)) for c in self.children
                    if isinstance(c, CrossTokenizerSource)}
        examples = []
        for i, r in enumerate(records):
            where = getattr(r, "origin", None) or f"{cfg.data.path}, record {i + 1}"
            route = route_index(r, self.route_key, names, where) if self.combine == "route" else None
            e = render_aligned(r, self.tokenizer, teachers, cfg.train.seq_len, fmt, cfg.data.text_field, where)
            if e is not None:
                examples.append(e if route is None else {**e, "route": route})
        if not examples:
            raise DataError(f"{cfg.data.path}: no record has a response that fits train.seq_len="
                            f"{cfg.train.seq_len} after its prompt, in the student's and every teacher's tokenizer; "
                            "raise train.seq_len")
        return examples

    def collate(self, examples: list[dict], pad_id: int) -> dict:
        batch = batching.collate(examples, pad_id)
        for c in self.children:
            if isinstance(c, CacheSource):
                batch[c.signal_key] = c.collate([c.cache.examples[e["index"]] for e in examples], pad_id)["signal"]
            elif isinstance(c, CrossTokenizerSource):  # its tokens and groups, under its name
                side = teacher_side([c.side(e) for e in examples], batch["mask"].shape,
                                    c.teacher_tokenizer.pad_token_id)
                batch.update({f"{c.name}/{k}": v for k, v in side.items()})
        if self.own_tokenizer is not None:
            batch["bytes"] = torch.tensor([e["bytes"] for e in examples])
        if self.combine == "route":
            batch["route"] = torch.tensor([e["route"] for e in examples])
        return batch

    def calibration_batch(self, examples: list[dict], pad_id: int) -> dict:
        """As the model the student starts from reads them (the student's tokens when it shares them)."""
        first = next((c for c in self.children if _live(c)), None)
        return batching.collate(examples, pad_id) if first is None else first.calibration_batch(examples, pad_id)

    def rollout_model(self):
        return None  # several teachers: none of them alone writes the rollouts

    def signal(self, batch: dict, vocab_size: int):
        if len(self.children) == 1 and self.combine == "sum":
            return self.children[0].signal(batch, vocab_size)  # one teacher: the plain signal
        parts = []
        for i, (child, w) in enumerate(zip(self.children, self.weights)):
            if self.combine == "sum":
                if w > 0:
                    parts.append(Part(child.against, w, child.signal(batch, vocab_size)))
                continue
            picked = (batch["route"] == i).nonzero().squeeze(-1)
            if not picked.numel():
                continue
            sub = batching.take_rows(batch, picked)
            signal = child.signal(sub, vocab_size)
            if signal.form == GROUPS:  # per aligned group of its examples: scored on those rows whole
                parts.append(Part(child.against, 1.0, signal, examples=picked))
                continue
            t = batch["mask"].shape[1]
            local = torch.full((batch["mask"].numel(),), -1, dtype=torch.long, device=batch["mask"].device)
            flat = (picked[:, None] * t + torch.arange(t, device=picked.device)).reshape(-1)
            local[flat] = torch.arange(flat.numel(), device=flat.device)
            parts.append(Part(child.against, 1.0, signal, local=local))
        return Mixture(tuple(parts))

    @property
    def provides_activations(self) -> bool:
        return all(c.provides_activations for c, w in zip(self.children, self.weights) if w > 0)

    def feature_teachers(self) -> list[dict]:
        """The weighted teachers whose activations `signal_and_activations` gives (for feature terms,
        `train/features.plan`): name, weight, model, and `copied`: "init" for the teacher the student was
        copied from, "self" for an EMA of the student, else None. ConfigError naming a cache entry."""
        out = []
        for i, (c, w) in enumerate(zip(self.children, self.weights)):
            if not c.provides_activations:
                raise ConfigError(f"teacher.sources[{i}] ({c.against}) gives the teacher's output signal only, no "
                                  "hidden states or attention on the student's tokens (a cache, or a teacher read "
                                  "through another tokenizer), which hidden_*/attention_* loss terms compare with "
                                  "every teacher's; give that entry its teacher's `model:` (sharing the student's "
                                  "tokenizer), or remove those terms")
            if w > 0:
                copied = "self" if isinstance(c, EmaSource) else "init" if c.model is self.init_model else None
                out.append({"name": c.against, "weight": w, "model": c.model, "copied": copied})
        return out

    def signal_and_activations(self, batch: dict, vocab_size: int, request: dict):
        """The combined signal and, from the same forwards (hooks on each teacher `request` names:
        {source name: {layer: names}}), {source name: {layer: {name: tensor}}}."""
        if not self.provides_activations:
            raise no_activations(self)
        models = {c.against: c.model for c in self.children if c.against in request}
        with contextlib.ExitStack() as hooks:
            found = {name: hooks.enter_context(capture(models[name], asked)) for name, asked in request.items()}
            signal = self.signal(batch, vocab_size)
        rows = tuple(batch["input_ids"].shape)
        for name, acts in found.items():
            shapes = {tuple(t.shape[:2]) for kept in acts.values() for v in kept.values()
                      for t in (v.get("q") if isinstance(v, dict) else v,) if torch.is_tensor(t)}  # qk: a dict
            if shapes != {rows}:
                raise ConfigError(f"teacher.sources {name}: its activations cover {sorted(shapes)} positions, not "
                                  f"the student's batch {rows}; feature terms need every teacher to read the "
                                  "student's tokens, whole batches (teacher.combine=sum, one tokenizer)")
        return signal, found

    def references(self) -> list:
        refs = [c for c in self.children]
        if self.combine == "sum" and len(self.children) > 1 and not any(
                isinstance(c, (CacheSource, CrossTokenizerSource)) for c in self.children):
            refs.append(MixtureReference(self.children, self.weights))  # p̄ needs one vocabulary
        return refs

    def final_reference(self, cfg, device, dtype):
        found = next((c for c in self.children if _live(c)), None)
        caches = [c for c in self.children if isinstance(c, CacheSource)]
        if found is not None:
            return found.final_reference(cfg, device, dtype)
        return caches[0].final_reference(cfg, device, dtype) if caches else None

    def identity(self) -> dict:
        return {"kind": "multi", "combine": self.combine,
                "sources": [{"name": c.against, "weight": w, **c.identity()} for c, w in zip(self.children,
                                                                                            self.weights)]}

    def attach_student(self, student) -> None:
        for c in self.children:
            c.attach_student(student)
        if self.copy_embeddings:  # the student's own tokenizer, shared by its first teacher: every row
            from kdistill.losses.cross.alignment import identity_pairs
            from kdistill.models.heads import head_weight
            from kdistill.students.own_tokenizer import copy_matching_embeddings

            first = next(c for c in self.children if _live(c))
            copy_matching_embeddings(student, first.model, *identity_pairs(int(head_weight(student).shape[0]),
                                                                           first.vocab_size))

    def after_step(self, student, step: int) -> None:
        for c in self.children:
            c.after_step(student, step)

    def state_dict(self) -> dict:
        return {f"{c.against}/{k}": v for c in self.children for k, v in c.state_dict().items()}

    def load_state_dict(self, state: dict) -> None:
        for c in self.children:
            prefix = f"{c.against}/"
            c.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

    def release_init(self) -> None:
        if not any(_live(c) for c in self.children):
            self._init = self.init_model = None
            self._vocab = next((c.vocab_size for c in self.children if isinstance(c, CacheSource)), None)


class MixtureReference:
    """Held-out metrics against the weighted mixture p̄ = Σ w_i p_i of the teachers."""

    against = "mixture"

    def __init__(self, children, weights):
        self.children, self.weights = children, weights
        self.static = all(c.static for c in children)

    def signal(self, batch: dict, vocab_size: int) -> MixtureDistribution:
        return MixtureDistribution(tuple(self.weights), tuple(c.signal(batch, vocab_size) for c in self.children))
