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
its tokens counted once. All teachers share the student's tokenizer; with a cache among them every
teacher scores the cache's tokens (caches must hold the same token ids; route needs live models). Held-out metrics are logged
against each teacher (`eval_<name>_kl`) and, for `sum` over live models, against their mixture
(`eval_mixture_kl`). One entry with weight 1 is the plain single teacher, bit for bit.
"""
from __future__ import annotations

import torch

from kdistill.base.errors import ConfigError, DataError, ModelError
from kdistill.cache import manifest as M
from kdistill.config.sources import source_entries
from kdistill.data import batches as batching
from kdistill.data.load import load_examples
from kdistill.losses.mixture import Mixture, MixtureDistribution, Part
from kdistill.sources.base import no_activations
from kdistill.sources.cached import CacheSource, init_teacher, open_for_training
from kdistill.sources.ema import EmaSource
from kdistill.sources.model import ModelSource


def _where(child) -> str:
    return child.spec if isinstance(child, ModelSource) else f"cache {child.cache.folder}"


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
    provides_activations = False
    static = False  # an ema child changes; references are evaluated one by one

    def __init__(self, children: list, weights: list[float], combine: str, route_key: str | None, init_model):
        self.children, self.weights, self.combine, self.route_key = children, weights, combine, route_key
        self.init_model, self._init = init_model, init_model
        self._init_folder = next((c.folder for c in children if isinstance(c, ModelSource)), "")
        models = [c for c in children if isinstance(c, ModelSource)]
        self.tokenizer = models[0].tokenizer if models else None
        self.against = "mixture"

    @classmethod
    def open(cls, cfg, device, dtype) -> "MultiSource":
        entries = source_entries(cfg.teacher)  # checked by the config
        makers = {"model": lambda e: _load_child(e, cfg, device, dtype), "cache": lambda e: _cache_child(e, cfg),
                  "ema": lambda e: EmaSource(e["name"], e["update_rate"], e["every"])}
        children = [makers[e["kind"]](e) for e in entries]
        models = [c for c in children if isinstance(c, ModelSource)]
        caches = [c for c in children if isinstance(c, CacheSource)]
        init, folder = (models[0].model, models[0].folder) if models else (None, "")
        if not models and caches:  # only caches (and ema): initialise as a single cache would
            init, folder, _ = init_teacher(caches[0].cache, cfg, device, dtype)
        elif not models:
            init_source = ModelSource.load(cfg, device, dtype)  # for the student's initialisation only
            init, folder = init_source.model, init_source.folder
            for c in children:
                c.tokenizer = init_source.tokenizer
        source = cls(children, [e["weight"] for e in entries], cfg.teacher.combine, cfg.teacher.route_key, init)
        source._init_folder = folder  # teacher-written data is keyed by the teacher that wrote it
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
                                 f"{named[0].against} ({_where(named[0])}); teachers combined here must share the "
                                 "student's tokenizer (cross-tokenizer distillation takes one teacher: student.tokenizer)")
        caches = [c for c in self.children if isinstance(c, CacheSource)]
        for c in caches[1:]:
            if c.cache.manifest["data"]["sha256"] != caches[0].cache.manifest["data"]["sha256"]:
                raise ConfigError(f"teacher.sources: caches {caches[0].against} and {c.against} hold other token "
                                  "ids (written over other data); write both caches from the same data settings")

    @property
    def vocab_size(self) -> int:
        if self._init is not None:
            return int(self._init.get_output_embeddings().weight.shape[0])
        return getattr(self, "_vocab", None) or self.children[0].vocab_size

    def load_examples(self, cfg, device) -> list[dict]:
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
            where = getattr(r, "origin", cfg.data.path)
            value = r.get(self.route_key)
            if value not in names:
                raise DataError(f"{where}: field '{self.route_key}' is {value!r}; teacher.combine=route needs it to "
                                f"name one of teacher.sources: {', '.join(names)}")
            groups.setdefault(names.index(value), []).append(r)
        examples = []
        for index, records in sorted(groups.items()):
            for e in render(records, self.tokenizer, cfg.train.seq_len, cfg.data.format, cfg.data.text_field,
                            cfg.data.path):
                examples.append({**e, "route": index})
        return examples

    def collate(self, examples: list[dict], pad_id: int) -> dict:
        batch = batching.collate(examples, pad_id)
        for c in self.children:
            if isinstance(c, CacheSource):
                batch[c.signal_key] = c.collate([c.cache.examples[e["index"]] for e in examples], pad_id)["signal"]
        if self.combine == "route":
            batch["route"] = torch.tensor([e["route"] for e in examples])
        return batch

    def calibration_batch(self, examples: list[dict], pad_id: int) -> dict:
        return batching.collate(examples, pad_id)  # the student's tokens: every teacher here shares them

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
            t = batch["mask"].shape[1]
            local = torch.full((batch["mask"].numel(),), -1, dtype=torch.long, device=batch["mask"].device)
            flat = (picked[:, None] * t + torch.arange(t, device=picked.device)).reshape(-1)
            local[flat] = torch.arange(flat.numel(), device=flat.device)
            parts.append(Part(child.against, 1.0, child.signal(sub, vocab_size), local=local))
        return Mixture(tuple(parts))

    def signal_and_activations(self, batch: dict, vocab_size: int, request: dict):
        raise no_activations(self)

    def references(self) -> list:
        refs = [c for c in self.children]
        if self.combine == "sum" and len(self.children) > 1 and not any(isinstance(c, CacheSource) for c in
                                                                          self.children):
            refs.append(MixtureReference(self.children, self.weights))
        return refs

    def final_reference(self, cfg, device, dtype):
        found = next((c for c in self.children if isinstance(c, ModelSource)), None)
        caches = [c for c in self.children if isinstance(c, CacheSource)]
        return found if found is not None or not caches else caches[0].final_reference(cfg, device, dtype)

    def identity(self) -> dict:
        return {"kind": "multi", "combine": self.combine,
                "sources": [{"name": c.against, "weight": w, **c.identity()} for c, w in zip(self.children,
                                                                                            self.weights)]}

    def attach_student(self, student) -> None:
        for c in self.children:
            c.attach_student(student)

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
        if not any(isinstance(c, ModelSource) for c in self.children):
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
