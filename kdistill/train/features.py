"""Feature terms at training time: the student's activations, the teacher's, projections between them.

    features = FeatureLoss(teachers, student_width)      # `plan` builds it: pairs resolved per teacher
    with capture(student, features.student_request) as found:     # inside StudentLoss.forward
        hidden = final_hidden(student, ...)
    loss, logs = features(found, teacher_acts, batch, num_tokens, progress)

The teacher's activations come from its source (`source.signal_and_activations`, hooks under no_grad),
the student's from hooks inside the wrapped forward (so DDP/FSDP see every use of every weight). Each
hidden_* / attention_output pair has a projection Linear(D_student -> D_teacher, no bias) in fp32,
identity at the start when the widths are equal, else the least-squares map on calibration tokens
(`fit_projections`); projections train with the student, are saved in each checkpoint as `features.safetensors`
and never go into student/. Values are computed on counted rows only, a chunk of rows at a time, in
fp32, and divided by the global token count (`reduce_tokens`), like every other term.

Several teachers (`teacher.sources`, an EMA of the student among them): each term's value is the weighted
sum over the teachers (the sources' normalised weights) of its value against each teacher alone, each
teacher with its own pairs (resolved against its own depth) and projections (its own width); the
activations then come keyed by source name, and each teacher's value is logged as `<term>/<name>`.

Under FSDP2 the projections are sharded with the root unit (gathered for the forward, gradients averaged
like the student's); `distributed.Whole.refresh` hands `tensors()` their whole values for a checkpoint,
and `load_tensors` copies whole values back into the shards.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from kdistill.losses.feature_terms import FeatureTerm
from kdistill.losses.features import HIDDEN, attention_map, sample_rows
from kdistill.losses.reduction import reduce_tokens
from kdistill.models.activations import attention_of, capture, layer_count
from kdistill.models.heads import decoder_layers, unwrap
from kdistill.students.layer_map import cka_map, resolve_pairs
from kdistill.students.llama import text_config
from kdistill.train.distributed import copy_whole

FEATURE_TENSORS = "features.safetensors"
GOLDEN = 0.6180339887498949


@dataclass(frozen=True)
class Teacher:
    """One teacher the feature terms compare with: its terms carry the pairs resolved against its layers."""

    name: str | None  # its teacher.sources name; None for the run's one teacher (activations not keyed)
    weight: float  # the source's normalised weight (1 for one teacher)
    width: int
    terms: tuple[FeatureTerm, ...]


def projection_key(term: FeatureTerm, s: int, t: int, teacher: str | None = None) -> str:
    key = f"{term.name}:{s}_{t}" if teacher is None else f"{teacher}/{term.name}:{s}_{t}"
    return key.replace(".", "_")  # a module name: no dots


def request(terms, side: int) -> dict[int, tuple[str, ...]]:
    """Layer -> activations to capture on one side (0 student, 1 teacher)."""
    out: dict[int, set] = {}
    for term in terms:
        for pair in term.resolved:
            out.setdefault(pair[side], set()).add(term.activation)
    return {k: tuple(sorted(v)) for k, v in out.items()}


def phase(progress: float) -> float:
    """The sampled query rows' offset for a step: the same for every micro-batch and process of the step."""
    return (round(progress * 1e6) * GOLDEN) % 1.0


def token_values(fn, student_rows: Tensor, teacher_rows: Tensor, project: nn.Module | None, num_tokens,
                 chunk: int) -> Tensor:
    """sum_rows fn(project(s), t) / num_tokens, a chunk of rows at a time. Shapes: (N, Ds), (N, Dt) -> ()

    With no row (a process whose rows count no token) the projection still runs once on an empty chunk,
    so every process's backward reaches it and the DDP/FSDP gradient reduction waits for nobody."""
    total = student_rows.new_zeros((), dtype=torch.promote_types(student_rows.dtype, torch.float32))
    for i in range(0, max(student_rows.shape[0], 1), chunk):
        s = student_rows[i:i + chunk]
        if project is not None:
            s = project(s.to(project.weight.dtype))
        total = total + reduce_tokens(fn(s, teacher_rows[i:i + chunk].to(s.device)), None, num_tokens)
    return total


class FeatureLoss(nn.Module):
    """The feature terms of an objective and their projections (the only loss part owning parameters)."""

    def __init__(self, teachers: list[Teacher], student_width: int, chunk_size: int = 4096):
        super().__init__()
        self.teachers, self.chunk_size = teachers, chunk_size
        self.terms = list(teachers[0].terms)  # the objective's terms (names, kinds, weights): each teacher's pairs
        self.projections = nn.ModuleDict()
        for side in teachers:
            for term in side.terms:
                for s, t in term.resolved if term.projected else ():
                    linear = nn.Linear(student_width, side.width, bias=False)
                    with torch.no_grad():
                        linear.weight.copy_(torch.eye(side.width, student_width))
                    self.projections[projection_key(term, s, t, side.name)] = linear.float()
        self.student_request = merged([request(side.terms, 0) for side in teachers])
        self.teacher_request = request(self.terms, 1) if teachers[0].name is None else \
            {side.name: request(side.terms, 1) for side in teachers}
        self._whole = None  # under fsdp: the projections as `distributed.Whole.refresh` last gathered them

    def projection(self, term: FeatureTerm, s: int, t: int, teacher: str | None = None) -> nn.Module | None:
        key = projection_key(term, s, t, teacher)
        return self.projections[key] if key in self.projections else None

    def schedule_values(self, progress: float) -> dict[str, float]:
        return {f"weight/{t.name}": t.weight(progress) for t in self.terms}

    def _pair_value(self, term: FeatureTerm, s: int, t: int, student: dict, teacher: dict, batch: dict,
                    rows: Tensor, num_tokens, progress: float, name: str | None) -> Tensor:
        mine, theirs = student[s][term.activation], teacher[t][term.activation]
        if term.kind == "attention_map":
            picked, weight = sample_rows(batch["mask"], term.rows, phase(progress))
            theirs = {k: v.to(batch["mask"].device) if isinstance(v, Tensor) else v for k, v in theirs.items()}
            values = attention_map(mine, theirs, picked, batch["attention_mask"])
            return reduce_tokens(values * weight.to(values.dtype), None, num_tokens)
        flat_s = mine.reshape(-1, mine.shape[-1]).index_select(0, rows)
        flat_t = theirs.reshape(-1, theirs.shape[-1]).index_select(0, rows.to(theirs.device))
        return token_values(HIDDEN[term.kind], flat_s, flat_t, self.projection(term, s, t, name), num_tokens,
                            self.chunk_size)

    def forward(self, student: dict, teacher: dict, batch: dict, num_tokens, progress: float = 0.0):
        """Weighted sum of the feature terms (each the mean over its pairs; with several teachers the
        weighted sum over them) and each term's value.

        student/teacher: `activations.capture` results (the teacher's keyed by source name when there are
        several). Shapes: batch mask (B, T) -> (), {name: float}"""
        rows = batch["mask"].reshape(-1).nonzero().squeeze(-1)
        total, logs = 0.0, {}
        for i, term in enumerate(self.terms):
            value = None
            for side in self.teachers:
                own, acts = side.terms[i], teacher if side.name is None else teacher[side.name]
                alone = sum(self._pair_value(own, s, t, student, acts, batch, rows, num_tokens, progress, side.name)
                            for s, t in own.resolved) / len(own.resolved)
                if side.name is None:
                    value = alone
                    continue
                logs[f"{term.name}/{side.name}"] = float(alone.detach())
                value = side.weight * alone if value is None else value + side.weight * alone
            logs[term.name] = float(value.detach())
            total = total + term.weight(progress) * value
        return total, logs

    def keep_whole(self, state: dict) -> None:
        """Under fsdp: the whole projections, gathered on every process by `distributed.Whole.refresh`."""
        self._whole = state

    def tensors(self) -> dict[str, Tensor]:
        """What a checkpoint keeps (`features.safetensors`): every projection weight, whole (under fsdp as
        the last `Whole.refresh` gathered them, which every checkpoint runs first)."""
        if self._whole is not None:
            whole, self._whole = self._whole, None
            return {k: v.detach().contiguous().cpu() for k, v in whole.items()}
        if any(hasattr(p, "full_tensor") for p in self.parameters()):
            raise RuntimeError("sharded projections: gather them with distributed.Whole.refresh first")
        return {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}

    def load_tensors(self, state: dict) -> None:
        """Restore `tensors()` (into this process's shards under fsdp); the same keys or RuntimeError."""
        own = dict(self.named_parameters())
        if own.keys() != state.keys():
            raise RuntimeError(f"features.safetensors holds {sorted(state)}, the run's projections are {sorted(own)}")
        for name, p in own.items():
            copy_whole(p, state[name])


def merged(requests: list[dict]) -> dict[int, tuple[str, ...]]:
    """Layer -> names: the union of several `request`s."""
    out: dict[int, set] = {}
    for r in requests:
        for layer, names in r.items():
            out.setdefault(layer, set()).update(names)
    return {k: tuple(sorted(v)) for k, v in sorted(out.items())}


def check_models(terms: list[FeatureTerm], student, teacher, who: str = "teacher") -> None:
    """Errors only the loaded models show: attention_map on a block without LLaMA-style attention."""
    for term in terms:
        if term.kind == "attention_map":
            for s, t in term.resolved:
                attention_of(decoder_layers(student)[s], f"{term.key} ({term.kind}): student layer {s}")
                attention_of(decoder_layers(teacher)[t], f"{term.key} ({term.kind}): {who} layer {t}")


def _source_report(entry: dict, report: dict | None, n_student: int, first: str) -> dict | None:
    """What from_init/span pair against for one of several teachers: the student's report for the teacher
    it was copied from, layer s for layer s for an EMA of the student; other teachers refuse them."""
    if entry["copied"] == "init":
        return report
    if entry["copied"] == "self":
        return {"layers": list(range(n_student))}
    return {"layers": f"copied from {first}, not from teacher.sources entry {entry['name']}"}


def plan(objective, student, teacher, report: dict | None, calib: dict | None, recorded: dict | None = None,
         chunk_size: int = 4096) -> FeatureLoss | None:
    """The objective's feature terms with their pairs resolved (`recorded` pairs of a resumed run first,
    so a resume never re-derives them), as a FeatureLoss; None without feature terms.

    `teacher`: the run's one teacher model, or several teachers (`MultiSource.feature_teachers()`: dicts
    of name, weight, model and `copied`: "init", "self" or None) whose activations come keyed by name."""
    if not objective.features:
        return None
    several = isinstance(teacher, list)
    entries = teacher if several else [{"name": None, "weight": 1.0, "model": teacher, "copied": "init"}]
    first = next((e["name"] for e in entries if e["copied"] == "init"), "teacher.model")
    ns, width = layer_count(student), text_config(unwrap(student).config).hidden_size
    sides = []
    for entry in entries:
        model, name = entry["model"], entry["name"]
        own = _source_report(entry, report, ns, first) if several else report
        saved = {k: (v.get(name) if several and isinstance(v, dict) else v) for k, v in (recorded or {}).items()}
        terms = _resolve(objective.features, student, model, own, calib, saved, f" (teacher.sources {name})"
                         if several else "")
        check_models(terms, student, model, f"teacher {name}" if several else "teacher")
        sides.append(Teacher(name, entry["weight"], text_config(unwrap(model).config).hidden_size, tuple(terms)))
    objective.features = list(sides[0].terms)
    features = FeatureLoss(sides, width, chunk_size)
    for side, entry in zip(sides, entries):
        if side.width != width and calib is not None and any(t.projected for t in side.terms):
            fit_projections(features, student, entry["model"], calib, side)
    return features


def _resolve(terms: list[FeatureTerm], student, teacher, report, calib, recorded: dict, where: str) -> list:
    """The terms with their pairs against `teacher`: recorded ones first, else by each term's rule."""
    ns, nt = layer_count(student), layer_count(teacher)
    found = {}

    def cka():
        if "cka" not in found:
            found["cka"] = cka_map(student, teacher, calib)[0]
        return found["cka"]

    out = []
    for term in terms:
        saved = recorded.get(term.name)
        pairs = [tuple(p) for p in saved] if saved else resolve_pairs(term.pairs, ns, nt, report, cka,
                                                                      f"{term.key}.pairs{where}")
        out.append(replace(term, resolved=tuple(pairs)))
    return out


@torch.no_grad()
def fit_projections(features: FeatureLoss, student, teacher, calib: dict, side: Teacher | None = None,
                    ridge: float = 1e-3) -> None:
    """Start each projection of a narrower (or wider) student at the least-squares map of its activations
    onto the teacher's on calibration tokens, W = TᵀS (SᵀS + λ·mean(diag)·I)⁻¹: for a pruned student this
    finds the kept channels itself, where eye(Dt, Ds) would pair channels that have nothing in common."""
    side = side or features.teachers[0]
    keep = calib["mask"].bool()
    found = []
    for model, asked in ((student, request(side.terms, 0)), (teacher, request(side.terms, 1))):
        with capture(model, asked) as acts:
            model(input_ids=calib["input_ids"], attention_mask=calib["attention_mask"], use_cache=False)
        found.append(acts)
    for term in side.terms:
        for s, t in term.resolved if term.projected else ():
            x = found[0][s][term.activation][keep].double()
            y = found[1][t][term.activation][keep].double().to(x.device)
            gram = x.T @ x
            gram += ridge * gram.diagonal().mean().clamp_min(1e-12) * torch.eye(gram.shape[0], dtype=gram.dtype,
                                                                                 device=gram.device)
            weight = torch.linalg.solve(gram, x.T @ y).T  # (Dt, Ds)
            features.projection(term, s, t, side.name).weight.copy_(weight.float())


def pairs_record(features: FeatureLoss | None) -> dict:
    """{term name: [[s, t], ...]} (several teachers: {term name: {source name: [[s, t], ...]}}): what the
    run record and every checkpoint keep."""
    if features is None:
        return {}
    if features.teachers[0].name is None:
        return {t.name: [list(p) for p in t.resolved] for t in features.terms}
    return {term.name: {side.name: [list(p) for p in side.terms[i].resolved] for side in features.teachers}
            for i, term in enumerate(features.terms)}
