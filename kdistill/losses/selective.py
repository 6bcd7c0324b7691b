"""Selective distillation: only where the teacher is uncertain, only on the teacher's top-k ids.

Per token (the guide's SelectiveTokenDistillation, made a per-token value like every other loss):

    keep  = H(softmax(teacher / T)) > entropy_threshold                (nats, on the teacher's support)
    value = keep · D(student, teacher restricted to its top-k ids, renormalised over the k, at T)

D is any divergence of `divergences.DIVERGENCES` (forward KL in the guide). Dropped positions count 0
and still count in the global token count: dividing by the number of kept positions instead (as the
guide does) would make the loss depend on how a batch is split.
"""
from __future__ import annotations

import torch
from torch import Tensor

from kdistill.losses.divergences import DIVERGENCES
from kdistill.losses.signals import DenseSignal, SparseSignal, entropy, pair_logprobs, teacher_logprobs


def top_k_signal(teacher, k: int) -> SparseSignal:
    """The teacher's k most likely ids (of a dense or sparse signal). Shapes: rows (...) -> ids (..., k)"""
    if isinstance(teacher, DenseSignal):
        return SparseSignal.from_logits(teacher.logits, min(k, teacher.vocab_size))
    logprobs, slots = teacher.logprobs.topk(min(k, teacher.k), dim=-1)
    return SparseSignal(ids=teacher.ids.gather(-1, slots), logprobs=logprobs)


@torch.no_grad()
def kept(teacher, temperature: float | Tensor, entropy_threshold: float, missing: str = "renormalize") -> Tensor:
    """Where `selective` trains: the teacher's entropy at `temperature` above the threshold.
    Shapes: teacher over (...) -> (...) bool"""
    return entropy(teacher_logprobs(teacher, temperature, missing)) > entropy_threshold


def selective(student_logits: Tensor, teacher, temperature: float | Tensor = 1.0, divergence: str = "forward_kl",
              top_k: int = 100, entropy_threshold: float = 0.5, missing: str = "renormalize", **params) -> Tensor:
    """Divergence on the teacher's top-k at positions whose teacher entropy exceeds the threshold, else 0.

    `missing` is the sparse teacher's policy used for its entropy. A dense `teacher_logits` tensor is
    accepted as a teacher. Shapes: student_logits (..., V), teacher over (...) -> (...)
    """
    if isinstance(teacher, Tensor):
        teacher = DenseSignal(logits=teacher)
    fn, defaults = DIVERGENCES[divergence]
    with torch.no_grad():
        keep = kept(teacher, temperature, entropy_threshold, missing)
        top = top_k_signal(teacher, top_k)
    values = fn(*pair_logprobs(student_logits, top, temperature, "renormalize"), **{**defaults, **params})
    return torch.where(keep, values, 0.0)
