"""Feature terms at training time: the student's activations, the teacher's, projections between them.

    features = FeatureLoss(objective.features with resolved pairs, student_width, teacher_width)
    with capture(student, features.student_request) as found:     # inside StudentLoss.forward
        hidden = final_hidden(student, ...)
    loss, logs = features(found, teacher_acts, batch, num_tokens, progress)

The teacher's activations come from its source (`source.signal_and_activations`, hooks under no_grad),
the student's from hooks inside the wrapped forward (so DDP sees every use of every weight). Each
hidden_* / attention_output pair has a projection Linear(D_student -> D_teacher, no bias) in fp32,
identity at the start when the widths are equal, else the least-squares map on calibration tokens
(`fit_projections`); projections train with the student, are saved in each checkpoint as `features.safetensors`
and never go into student/. Values are computed on counted rows only, a chunk of rows at a time, in
fp32, and divided by the global token count (`reduce_tokens`), like every other term.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from kdistill.losses.feature_terms import FeatureTerm
from kdistill.losses.features import HIDDEN, attention_map, sample_rows
from kdistill.losses.reduction import reduce_tokens
from kdistill.models.activations import attention_of, capture, layer_count
from kdistill.models.heads import decoder_layers, unwrap
from kdistill.students.layer_map import cka_map, resolve_pairs
from kdistill.students.llama import text_config

FEATURE_TENSORS = "features.safetensors"
GOLDEN = 0.6180339887498949


def projection_key(term: FeatureTerm, s: int, t: int) -> str:
    return f"{term.name}:{s}_{t}"  # a module name: no dots


def request(terms: list[FeatureTerm], side: int) -> dict[int, tuple[str, ...]]:
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
    """sum_rows fn(project(s), t) / num_tokens, a chunk of rows at a time. Shapes: (N, Ds), (N, Dt) -> ()"""
    total = student_rows.new_zeros((), dtype=torch.promote_types(student_rows.dtype, torch.float32))
    for i in range(0, student_rows.shape[0], chunk):
        s = student_rows[i:i + chunk]
        if project is not None:
            s = project(s.to(project.weight.dtype))
        total = total + reduce_tokens(fn(s, teacher_rows[i:i + chunk].to(s.device)), None, num_tokens)
    return total


class FeatureLoss(nn.Module):
    """The feature terms of an objective and their projections (the only loss part owning parameters)."""

    def __init__(self, terms: list[FeatureTerm], student_width: int, teacher_width: int, chunk_size: int = 4096):
        super().__init__()
        self.terms, self.chunk_size = terms, chunk_size
        self.projections = nn.ModuleDict()
        for term in terms:
            for s, t in term.resolved if term.projected else ():
                linear = nn.Linear(student_width, teacher_width, bias=False)
                with torch.no_grad():
                    linear.weight.copy_(torch.eye(teacher_width, student_width))
                self.projections[projection_key(term, s, t)] = linear.float()
        self.student_request, self.teacher_request = request(terms, 0), request(terms, 1)

    def projection(self, term: FeatureTerm, s: int, t: int) -> nn.Module | None:
        key = projection_key(term, s, t)
        return self.projections[key] if key in self.projections else None

    def schedule_values(self, progress: float) -> dict[str, float]:
        return {f"weight/{t.name}": t.weight(progress) for t in self.terms}

    def _pair_value(self, term: FeatureTerm, s: int, t: int, student: dict, teacher: dict, batch: dict,
                    rows: Tensor, num_tokens, progress: float) -> Tensor:
        mine, theirs = student[s][term.activation], teacher[t][term.activation]
        if term.kind == "attention_map":
            picked, weight = sample_rows(batch["mask"], term.rows, phase(progress))
            theirs = {k: v.to(batch["mask"].device) if isinstance(v, Tensor) else v for k, v in theirs.items()}
            values = attention_map(mine, theirs, picked, batch["attention_mask"])
            return reduce_tokens(values * weight.to(values.dtype), None, num_tokens)
        flat_s = mine.reshape(-1, mine.shape[-1]).index_select(0, rows)
        flat_t = theirs.reshape(-1, theirs.shape[-1]).index_select(0, rows.to(theirs.device))
        return token_values(HIDDEN[term.kind], flat_s, flat_t, self.projection(term, s, t), num_tokens,
                            self.chunk_size)

    def forward(self, student: dict, teacher: dict, batch: dict, num_tokens, progress: float = 0.0):
        """Weighted sum of the feature terms (each the mean over its pairs) and each term's value.

        student/teacher: `activations.capture` results. Shapes: batch mask (B, T) -> (), {name: float}"""
        rows = batch["mask"].reshape(-1).nonzero().squeeze(-1)
        total, logs = 0.0, {}
        for term in self.terms:
            value = sum(self._pair_value(term, s, t, student, teacher, batch, rows, num_tokens, progress)
                        for s, t in term.resolved) / len(term.resolved)
            logs[term.name] = float(value.detach())
            total = total + term.weight(progress) * value
        return total, logs

    def tensors(self) -> dict[str, Tensor]:
        """What a checkpoint keeps (`features.safetensors`): every projection weight."""
        return {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}

    def load_tensors(self, state: dict) -> None:
        self.load_state_dict(state, strict=True)


def check_models(terms: list[FeatureTerm], student, teacher) -> None:
    """Errors only the loaded models show: attention_map on a block without LLaMA-style attention."""
    for term in terms:
        if term.kind == "attention_map":
            for s, t in term.resolved:
                attention_of(decoder_layers(student)[s], f"{term.key} ({term.kind}): student layer {s}")
                attention_of(decoder_layers(teacher)[t], f"{term.key} ({term.kind}): teacher layer {t}")


def plan(objective, student, teacher, report: dict | None, calib: dict | None, recorded: dict | None = None,
         chunk_size: int = 4096) -> FeatureLoss | None:
    """The objective's feature terms with their pairs resolved (`recorded` pairs of a resumed run first,
    so a resume never re-derives them), as a FeatureLoss; None without feature terms."""
    if not objective.features:
        return None
    ns, nt = layer_count(student), layer_count(teacher)
    found = {}

    def cka():
        if "cka" not in found:
            found["cka"] = cka_map(student, teacher, calib)[0]
        return found["cka"]

    terms = []
    for term in objective.features:
        saved = (recorded or {}).get(term.name)
        pairs = [tuple(p) for p in saved] if saved else resolve_pairs(term.pairs, ns, nt, report, cka,
                                                                      f"{term.key}.pairs")
        terms.append(replace(term, resolved=tuple(pairs)))
    check_models(terms, student, teacher)
    objective.features = terms
    width = text_config(teacher.config).hidden_size
    features = FeatureLoss(terms, text_config(unwrap(student).config).hidden_size, width, chunk_size)
    if features.projections and width != text_config(unwrap(student).config).hidden_size and calib is not None:
        fit_projections(features, student, teacher, calib)
    return features


@torch.no_grad()
def fit_projections(features: FeatureLoss, student, teacher, calib: dict, ridge: float = 1e-3) -> None:
    """Start each projection of a narrower (or wider) student at the least-squares map of its activations
    onto the teacher's on calibration tokens, W = TᵀS (SᵀS + λ·mean(diag)·I)⁻¹: for a pruned student this
    finds the kept channels itself, where eye(Dt, Ds) would pair channels that have nothing in common."""
    keep = calib["mask"].bool()
    found = []
    for model, side in ((student, features.student_request), (teacher, features.teacher_request)):
        with capture(model, side) as acts:
            model(input_ids=calib["input_ids"], attention_mask=calib["attention_mask"], use_cache=False)
        found.append(acts)
    for term in features.terms:
        for s, t in term.resolved if term.projected else ():
            x = found[0][s][term.activation][keep].double()
            y = found[1][t][term.activation][keep].double().to(x.device)
            gram = x.T @ x
            gram += ridge * gram.diagonal().mean().clamp_min(1e-12) * torch.eye(gram.shape[0], dtype=gram.dtype,
                                                                                 device=gram.device)
            weight = torch.linalg.solve(gram, x.T @ y).T  # (Dt, Ds)
            features.projection(term, s, t).weight.copy_(weight.float())


def pairs_record(features: FeatureLoss | None) -> dict:
    """{term name: [[s, t], ...]}: what the run record and every checkpoint keep."""
    return {} if features is None else {t.name: [list(p) for p in t.resolved] for t in features.terms}
