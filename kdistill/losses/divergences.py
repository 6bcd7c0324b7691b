"""Per-token divergences between a student and a teacher distribution, and cross-entropy.

Two layers. `*_from_logprobs(student_logprobs, teacher_logprobs, ...)` take two normalised
log-distributions on one support (from `signals.pair_logprobs`, dense or sparse) and reduce the last
axis. The plain functions (`forward_kl(student_logits, teacher_logits, temperature)`, ...) take dense
logits, for evaluation and as the readable definition. p is the teacher, q the student, both at
temperature T: p = softmax(teacher_logits / T), q = softmax(student_logits / T).

| name            | per-token value                                              |
|-----------------|--------------------------------------------------------------|
| forward_kl      | KL(p ‖ q) = Σ p (log p - log q)                  mode-covering |
| reverse_kl      | KL(q ‖ p)                                         mode-seeking |
| bidirectional_kl| forward_weight · KL(p ‖ q) + reverse_weight · KL(q ‖ p)   (BiLD form of the guide) |
| jsd             | β KL(p ‖ m) + (1-β) KL(q ‖ m), m = β p + (1-β) q, 0 < β < 1   (GKD) |
| skew_forward_kl | KL(p ‖ α p + (1-α) q), 0 ≤ α < 1                   (DistiLLM) |
| skew_reverse_kl | KL(q ‖ α q + (1-α) p), 0 ≤ α < 1                   (DistiLLM) |
| tvd             | ½ Σ |p - q|                                                  |
| ce              | (1-ε)(-log q[y]) + ε · mean_v(-log q_v)   (label smoothing ε; no teacher) |

Terms with p = 0 contribute 0 (no 0 · log 0 NaN); ids outside the teacher's support are dropped on
both sides (see `signals`). All values are >= 0 and 0 for identical distributions.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from kdistill.losses.signals import DenseSignal, fp32, pair_logprobs


def kl(logprobs_a: Tensor, logprobs_b: Tensor) -> Tensor:
    """KL(a ‖ b) over the last axis; entries where a = 0 contribute 0. Shapes: (..., S), (..., S) -> (...)"""
    a = logprobs_a.exp()
    return (a * torch.where(a > 0, logprobs_a - logprobs_b, 0.0)).sum(-1)


def log_mixture(logprobs_a: Tensor, logprobs_b: Tensor, weight_a: float) -> Tensor:
    """log(w · a + (1 - w) · b) for 0 <= w <= 1. Shapes: (..., S), (..., S) -> (..., S)"""
    if weight_a == 0.0:
        return logprobs_b
    if weight_a == 1.0:
        return logprobs_a
    return torch.logaddexp(logprobs_a + math.log(weight_a), logprobs_b + math.log1p(-weight_a))


def forward_kl_from_logprobs(student_logprobs: Tensor, teacher_logprobs: Tensor) -> Tensor:
    """KL(teacher ‖ student). Shapes: (..., S), (..., S) -> (...)"""
    return kl(teacher_logprobs, student_logprobs)


def reverse_kl_from_logprobs(student_logprobs: Tensor, teacher_logprobs: Tensor) -> Tensor:
    """KL(student ‖ teacher). Shapes: (..., S), (..., S) -> (...)"""
    return kl(student_logprobs, teacher_logprobs)


def bidirectional_kl_from_logprobs(student_logprobs: Tensor, teacher_logprobs: Tensor,
                                   forward_weight: float = 0.5, reverse_weight: float = 0.5) -> Tensor:
    """forward_weight · KL(teacher ‖ student) + reverse_weight · KL(student ‖ teacher).

    Shapes: (..., S), (..., S) -> (...)
    """
    return (forward_weight * kl(teacher_logprobs, student_logprobs)
            + reverse_weight * kl(student_logprobs, teacher_logprobs))


def jsd_from_logprobs(student_logprobs: Tensor, teacher_logprobs: Tensor, beta: float = 0.5) -> Tensor:
    """Generalised JSD: β KL(p ‖ m) + (1-β) KL(q ‖ m), m = β p + (1-β) q. Shapes: (..., S), (..., S) -> (...)"""
    mixture = log_mixture(teacher_logprobs, student_logprobs, beta)
    return beta * kl(teacher_logprobs, mixture) + (1 - beta) * kl(student_logprobs, mixture)


def skew_forward_kl_from_logprobs(student_logprobs: Tensor, teacher_logprobs: Tensor,
                                  alpha: float = 0.1) -> Tensor:
    """KL(p ‖ α p + (1-α) q). Shapes: (..., S), (..., S) -> (...)"""
    return kl(teacher_logprobs, log_mixture(teacher_logprobs, student_logprobs, alpha))


def skew_reverse_kl_from_logprobs(student_logprobs: Tensor, teacher_logprobs: Tensor,
                                  alpha: float = 0.1) -> Tensor:
    """KL(q ‖ α q + (1-α) p). Shapes: (..., S), (..., S) -> (...)"""
    return kl(student_logprobs, log_mixture(student_logprobs, teacher_logprobs, alpha))


def tvd_from_logprobs(student_logprobs: Tensor, teacher_logprobs: Tensor) -> Tensor:
    """Total variation ½ Σ |p - q|. Shapes: (..., S), (..., S) -> (...)"""
    return 0.5 * (teacher_logprobs.exp() - student_logprobs.exp()).abs().sum(-1)


# name -> (function on a log-probability pair, its parameters with defaults); the config reads this table
DIVERGENCES = {
    "forward_kl": (forward_kl_from_logprobs, {}),
    "reverse_kl": (reverse_kl_from_logprobs, {}),
    "bidirectional_kl": (bidirectional_kl_from_logprobs, {"forward_weight": 0.5, "reverse_weight": 0.5}),
    "jsd": (jsd_from_logprobs, {"beta": 0.5}),
    "skew_forward_kl": (skew_forward_kl_from_logprobs, {"alpha": 0.1}),
    "skew_reverse_kl": (skew_reverse_kl_from_logprobs, {"alpha": 0.1}),
    "tvd": (tvd_from_logprobs, {}),
}


def divergence(name: str, student_logits: Tensor, teacher, temperature: float | Tensor = 1.0,
               missing: str = "renormalize", lse: Tensor | None = None, **params) -> Tensor:
    """Divergence `name` between student logits and a teacher (logits tensor or signal), per token.

    `lse`: logsumexp(student_logits, -1, keepdim) if the caller has it already (shared between terms).
    Shapes: student_logits (..., V), teacher (..., V) logits or a signal over (...) -> (...)
    """
    if isinstance(teacher, Tensor):
        teacher = DenseSignal(logits=teacher)
    fn, defaults = DIVERGENCES[name]
    student_logprobs, teacher_logprobs = pair_logprobs(student_logits, teacher, temperature, missing, lse)
    return fn(student_logprobs, teacher_logprobs, **{**defaults, **params})


def forward_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor = 1.0) -> Tensor:
    """KL(teacher ‖ student) at temperature T. Shapes: (..., V), (..., V) -> (...)"""
    return divergence("forward_kl", student_logits, teacher_logits, temperature)


def reverse_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor = 1.0) -> Tensor:
    """KL(student ‖ teacher) at temperature T. Shapes: (..., V), (..., V) -> (...)"""
    return divergence("reverse_kl", student_logits, teacher_logits, temperature)


def bidirectional_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor = 1.0,
                     forward_weight: float = 0.5, reverse_weight: float = 0.5) -> Tensor:
    """Weighted forward + reverse KL at temperature T. Shapes: (..., V), (..., V) -> (...)"""
    return divergence("bidirectional_kl", student_logits, teacher_logits, temperature,
                      forward_weight=forward_weight, reverse_weight=reverse_weight)


def jsd(student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor = 1.0,
        beta: float = 0.5) -> Tensor:
    """Generalised JSD(β), mixture β·teacher + (1-β)·student. Shapes: (..., V), (..., V) -> (...)"""
    return divergence("jsd", student_logits, teacher_logits, temperature, beta=beta)


def skew_forward_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor = 1.0,
                    alpha: float = 0.1) -> Tensor:
    """KL(p ‖ α p + (1-α) q) at temperature T. Shapes: (..., V), (..., V) -> (...)"""
    return divergence("skew_forward_kl", student_logits, teacher_logits, temperature, alpha=alpha)


def skew_reverse_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor = 1.0,
                    alpha: float = 0.1) -> Tensor:
    """KL(q ‖ α q + (1-α) p) at temperature T. Shapes: (..., V), (..., V) -> (...)"""
    return divergence("skew_reverse_kl", student_logits, teacher_logits, temperature, alpha=alpha)


def tvd(student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor = 1.0) -> Tensor:
    """Total variation distance at temperature T. Shapes: (..., V), (..., V) -> (...)"""
    return divergence("tvd", student_logits, teacher_logits, temperature)


def cross_entropy(student_logits: Tensor, targets: Tensor, temperature: float | Tensor = 1.0,
                  label_smoothing: float = 0.0, lse: Tensor | None = None) -> Tensor:
    """Cross-entropy with the next-token ids, as F.cross_entropy(label_smoothing=ε) but per token.

    -log q[y] = lse - logits[y] and -mean_v log q_v = lse - mean_v logits_v, with lse the logsumexp of
    the tempered logits: no (..., V) log-probabilities are made. `lse` (..., 1) may be passed in when the
    caller has it for these tempered logits already.
    Shapes: student_logits (..., V), targets (...) long -> (...)
    """
    if isinstance(temperature, Tensor):
        temperature = temperature.unsqueeze(-1)
    logits = fp32(student_logits) / temperature if not _is_one(temperature) else fp32(student_logits)
    if lse is None:
        lse = logits.logsumexp(-1, keepdim=True)
    nll = (lse - logits.gather(-1, targets.unsqueeze(-1))).squeeze(-1)
    if label_smoothing == 0.0:
        return nll
    return (1 - label_smoothing) * nll + label_smoothing * (lse.squeeze(-1) - logits.mean(-1))


def _is_one(temperature: float | Tensor) -> bool:
    return not isinstance(temperature, Tensor) and temperature == 1.0
