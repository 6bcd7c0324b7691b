"""Which teacher layer each student layer learns from: (student layer, teacher layer) pairs.

    pairs = resolve_pairs("from_init", n_student=8, n_teacher=30, report=student_report)
    sim = cka_matrix(student, teacher, batch)            # (Ls, Lt) linear CKA on calibration tokens
    pairs = monotone_map(sim)                            # best order-keeping mapping (dynamic programming)

Rules (`pairs:` of a feature term):
- uniform: student layer s (of Ls) -> teacher layer ⌊(s + 1)·Lt/Ls + ½⌋ - 1, so the last maps to the last.
- from_init: the teacher layers the student was initialised from (`init.py`/`prune.py`; kept in the run
  record and every checkpoint's trainer_state.json as `feature_pairs`).
- span: for a student copied from teacher layers k_0 < k_1 < ..., student layer j stands for the teacher's
  span k_j .. k_(j+1) - 1, so its output is paired with the last layer of that span (the stream the next
  kept layer read in the teacher), the last student layer with the teacher's last.
- cka: `cka_map` on calibration data at the start of the run (`kdistill map-layers` writes the same pairs).
- [[s, t], ...]: as given; a layer that does not exist is a ConfigError naming both models' depths.

Linear CKA (Kornblith et al., 2019) compares what each block adds to the residual stream (its output minus
its input) over the same tokens: a block copied from the teacher adds nearly what it added there, wherever
it now sits, while the streams themselves are dominated by the embedding and look alike at every depth.
"""
from __future__ import annotations

import torch

from kdistill.base.errors import ConfigError
from kdistill.models.activations import capture, layer_count


def uniform_pairs(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    return [(s, max(0, int((s + 1) * n_teacher / n_student + 0.5) - 1)) for s in range(n_student)]


def init_layers(report: dict | None) -> list[int] | None:
    """The teacher layers a student report says were copied (or pruned) into it, in order, or None."""
    layers = (report or {}).get("layers")
    return list(layers) if isinstance(layers, list) and layers and all(isinstance(x, int) for x in layers) else None


def increasing(layers: list[int]) -> bool:
    """Whether copied teacher layers are in strictly increasing order (so each stands for a span)."""
    return all(a < b for a, b in zip(layers, layers[1:]))


def span_pairs(layers: list[int], n_teacher: int) -> list[tuple[int, int]]:
    """(student layer j, last teacher layer of its span): layer j stands for teacher layers layers[j] ..
    layers[j + 1] - 1, the last for the rest. `layers`: the teacher layers copied, increasing."""
    return [(j, end - 1) for j, end in enumerate(list(layers[1:]) + [n_teacher])]


def check_pairs(pairs, n_student: int, n_teacher: int, key: str) -> list[tuple[int, int]]:
    bad = [(s, t) for s, t in pairs if not (0 <= s < n_student and 0 <= t < n_teacher)]
    if bad:
        s, t = bad[0]
        raise ConfigError(f"{key}: pair [{s}, {t}] names a layer that does not exist: the student has {n_student} "
                          f"layers (0..{n_student - 1}), the teacher {n_teacher} (0..{n_teacher - 1})")
    return [(int(s), int(t)) for s, t in pairs]


def resolve_pairs(rule, n_student: int, n_teacher: int, report: dict | None = None, cka=None,
                  key: str = "pairs") -> list[tuple[int, int]]:
    """The pairs of a term's `pairs:` value; `cka()` computes the CKA map when the rule asks for it."""
    if rule == "uniform":
        return uniform_pairs(n_student, n_teacher)
    if rule in ("from_init", "span"):
        layers = init_layers(report)
        if layers is None or len(layers) != n_student:
            raise ConfigError(f"{key}={rule}: the student was not initialised from teacher layers "
                              f"(its report says layers: {(report or {}).get('layers')!r}); use pairs: uniform, "
                              "cka or a list, or student.init=teacher with a LLaMA-family teacher")
        if rule == "span":
            if not increasing(layers):
                raise ConfigError(f"{key}=span: the student's layers {layers} are not in increasing order, so "
                                  "they stand for no spans of the teacher; use pairs: from_init or a list")
            return check_pairs(span_pairs(layers, n_teacher), n_student, n_teacher, key)
        return check_pairs(list(enumerate(layers)), n_student, n_teacher, key)
    if rule == "cka":
        return check_pairs(cka(), n_student, n_teacher, key)
    return check_pairs(rule, n_student, n_teacher, key)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two representations of the same N tokens, in float64 (feature-space form, no N x N
    Gram matrix). Shapes: x (N, Dx), y (N, Dy) -> float in [0, 1]"""
    x, y = x.double() - x.double().mean(0), y.double() - y.double().mean(0)
    cross = (y.T @ x).pow(2).sum()
    return float(cross / ((x.T @ x).norm() * (y.T @ y).norm()).clamp_min(1e-30))


@torch.no_grad()
def layer_updates(model, batch: dict) -> list[torch.Tensor]:
    """What each block adds to the residual stream at counted tokens. Shapes: -> [(N, D)] * L"""
    n = layer_count(model)
    with capture(model, {i: ("update",) for i in range(n)}) as found:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    keep = batch["mask"].bool()
    return [found[i]["update"][keep].float().cpu() for i in range(n)]


def cka_matrix(student, teacher, batch: dict) -> torch.Tensor:
    """Linear CKA between every student and teacher block's update on `batch`. Shapes: -> (Ls, Lt)"""
    s, t = layer_updates(student, batch), layer_updates(teacher, batch)
    return torch.tensor([[linear_cka(a, b) for b in t] for a in s], dtype=torch.float64)


def monotone_map(sim: torch.Tensor) -> list[tuple[int, int]]:
    """Pairs (s, t_s) maximising sum_s sim[s, t_s] with t strictly increasing (non-decreasing when the
    student is deeper than the teacher), by dynamic programming in O(Ls * Lt). Shapes: sim (Ls, Lt)"""
    ls, lt = sim.shape
    step = 1 if ls <= lt else 0
    best = sim[0].clone()
    back = []
    for s in range(1, ls):
        prefix, arg = best.clone(), torch.zeros(lt, dtype=torch.long)
        run, at = float("-inf"), 0
        for t in range(lt):  # prefix[t] = max over u <= t - step of best[u]
            u = t - step
            if u >= 0 and best[u] > run:
                run, at = float(best[u]), u
            prefix[t], arg[t] = run, at
        best = prefix + sim[s]
        back.append(arg)
    t = int(best.argmax())
    pairs = [(ls - 1, t)]
    for s in range(ls - 1, 0, -1):
        t = int(back[s - 1][t])
        pairs.append((s - 1, t))
    return pairs[::-1]


def cka_map(student, teacher, batch: dict) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """The monotone CKA mapping and the matrix it came from."""
    sim = cka_matrix(student, teacher, batch)
    return monotone_map(sim), sim
