"""Losses across tokenizers: group distributions, `uld` and `hybrid`, on byte-aligned token groups.

The student and the teacher read the same text through their own tokenizers; `alignment.byte_groups`
groups their tokens so that each group covers the same bytes on both sides. On each side a group's
distribution has V + 1 entries, from the conditionals of its tokens (the first token's full distribution,
then the actual later tokens):

    entry v ≠ a  : p(first token = v)                       a: the group's actual first token
    entry a      : p(a) · Π p(actual later tokens)            the whole group's text, this tokenization
    entry V      : p(a) · (1 − Π p(actual later tokens))      a, then something else ("the bucket")

These sum to 1; a one-token group (always, with one tokenizer) is exactly the token's distribution with an
empty bucket. Kinds (loss terms of the objective, per group, at temperature T on the group log-values):

- `uld` (Universal Logit Distillation, Boizard et al. 2024): Σ_k |p_sorted[k] − q_sorted[k]| over the top_k
  probabilities of each side, sorted, the shorter padded with zeros. Needs no vocabulary mapping.
- `hybrid`: an exact divergence (`divergence`, forward_kl by default) on the entries whose strings match
  (`alignment.string_pairs`), the group entries (a on each side, paired) and one "other" entry (each side's
  remaining mass), plus `uld` over each side's remaining entries. With one tokenizer on both sides it is
  the plain divergence; with no shared strings at all it is `uld`.

The "other" entry: if only the teacher's is empty it holds 0 (the student's mass there is still
penalised); if the student's is empty and the teacher's is not, it is dropped (the teacher is
renormalised over the aligned entries, as a padded vocabulary is). Token counts: every value here is per
group and the objective divides the sum by the global count of student tokens (`reduction`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from kdistill.losses.divergences import DIVERGENCES
from kdistill.losses.signals import GROUPS, NEG, DenseSignal, fp32, log1mexp, normalise_pair

KINDS = ("uld", "hybrid")
EMPTY = 1e-30  # a sum of later log-probabilities above -EMPTY leaves the bucket empty


@dataclass(frozen=True)
class CrossSignal:
    """The teacher over byte-aligned groups of the student's tokens (built by `sources/cross.py`).

    teacher: the teacher's distribution at each group's first token (G rows: logits, or hidden + weight);
    teacher_rest: Σ log p of the group's later teacher tokens; teacher_first: its first token id;
    group_of: the global group of each flat student position, -1 outside any group (not in the mask);
    student_pairs / teacher_pairs: vocabulary entries with equal strings; vocab_size: the student's;
    teacher_tokens: how many teacher tokens the groups hold (for per-token teacher metrics).
    Shapes: teacher over (G,), teacher_rest (G,), teacher_first (G,) long, group_of (B*T,) long, pairs (M,)
    """

    form: ClassVar[str] = GROUPS
    teacher: DenseSignal
    teacher_rest: Tensor
    teacher_first: Tensor
    group_of: Tensor
    student_pairs: Tensor
    teacher_pairs: Tensor
    vocab_size: int
    teacher_tokens: int = 0

    def take_groups(self, groups: Tensor) -> tuple[Tensor, Tensor]:
        """The teacher's group log-probabilities and first ids. Shapes: groups (g,) -> (g, Vt + 1), (g,)"""
        logits = self.teacher.take(groups).logits
        first = self.teacher_first[groups]
        return group_logprobs(fp32(logits).log_softmax(-1), first, self.teacher_rest[groups]), first


def group_logprobs(first_logprobs: Tensor, first_ids: Tensor, later: Tensor) -> Tensor:
    """Log-probabilities of a group's V + 1 outcomes (module docstring) from its tokens' conditionals.

    first_logprobs: log-softmax at the group's first token; first_ids: that token; later: Σ log p of the
    group's actual later tokens (0 for a one-token group).
    Shapes: first_logprobs (g, V), first_ids (g,) long, later (g,) -> (g, V + 1)
    """
    at = first_logprobs.gather(-1, first_ids[:, None])
    later = later.to(at.dtype)[:, None]
    empty = later > -EMPTY
    bucket = torch.where(empty, NEG, at + log1mexp(later.clamp(max=-EMPTY)))
    whole = first_logprobs.scatter(-1, first_ids[:, None], at + later)
    return torch.cat([whole, bucket], dim=-1)


def temper(logprobs: Tensor, temperature: float) -> Tensor:
    """softmax(log p / T) as log-probabilities; NEG entries stay empty. Shapes: (..., S) -> (..., S)"""
    return logprobs if temperature == 1.0 else (logprobs / temperature).log_softmax(-1)


def uld(student_logprobs: Tensor, teacher_logprobs: Tensor, top_k: int = 100) -> Tensor:
    """Σ_k |sorted q[k] − sorted p[k]| over each side's top_k probabilities, zero-padded to one length.

    Entries may be masked with NEG (probability 0): then only the unmasked mass takes part.
    Shapes: student_logprobs (..., Ss), teacher_logprobs (..., St) -> (...)
    """
    ks, kt = min(top_k, student_logprobs.shape[-1]), min(top_k, teacher_logprobs.shape[-1])
    q = student_logprobs.topk(ks, dim=-1).values.exp()
    p = teacher_logprobs.topk(kt, dim=-1).values.exp().to(q.dtype)
    k = max(ks, kt)
    q = torch.nn.functional.pad(q, (0, k - ks))
    p = torch.nn.functional.pad(p, (0, k - kt))
    return (q - p).abs().sum(-1)


def _aligned(shape, pairs: Tensor, first: Tensor, excluded: Tensor) -> Tensor:
    """Entries of one side taking part in the exact divergence: matched ids not excluded, and the first.

    Shapes: shape (g, V + 1), pairs (M,), first (g,), excluded (g, M) bool -> (g, V + 1) bool
    """
    mask = torch.zeros(shape, dtype=torch.bool, device=first.device)
    mask[:, pairs] = True
    rows, slots = excluded.nonzero(as_tuple=True)
    mask[rows, pairs[slots]] = False
    mask[torch.arange(shape[0], device=first.device), first] = True
    return mask


def _other(logprobs: Tensor, aligned: Tensor) -> Tensor:
    """log of the mass outside the aligned entries (NEG-level when none). Shapes: (g, S), (g, S) -> (g, 1)"""
    return logprobs.masked_fill(aligned, NEG).logsumexp(-1, keepdim=True)


def aligned_support(student_logprobs: Tensor, teacher_logprobs: Tensor, student_first: Tensor,
                    teacher_first: Tensor, student_pairs: Tensor, teacher_pairs: Tensor):
    """Both sides' log-values on the common support (matched strings, the group entry, "other") and
    which of their own entries that support holds. Entries outside the teacher's support are -inf there.

    Shapes: (g, Vs + 1), (g, Vt + 1), (g,), (g,), (M,), (M,) -> (g, M + 2), (g, M + 2), (g, Vs + 1), (g, Vt + 1)
    """
    excluded = (student_pairs[None] == student_first[:, None]) | (teacher_pairs[None] == teacher_first[:, None])
    s_aligned = _aligned(student_logprobs.shape, student_pairs, student_first, excluded)
    t_aligned = _aligned(teacher_logprobs.shape, teacher_pairs, teacher_first, excluded)
    s_other, t_other = _other(student_logprobs, s_aligned), _other(teacher_logprobs, t_aligned)
    s_empty, t_empty = s_other < NEG / 2, t_other < NEG / 2
    t_other = torch.where(t_empty, NEG, t_other).masked_fill(s_empty & ~t_empty, float("-inf"))
    t_pair = teacher_logprobs[:, teacher_pairs].masked_fill(excluded, float("-inf"))  # the group column has them
    student = torch.cat([student_logprobs[:, student_pairs], student_logprobs.gather(-1, student_first[:, None]),
                         s_other], dim=-1)
    teacher = torch.cat([t_pair, teacher_logprobs.gather(-1, teacher_first[:, None]), t_other], dim=-1)
    return student, teacher.to(student.dtype), s_aligned, t_aligned


def hybrid(student_logprobs: Tensor, teacher_logprobs: Tensor, student_first: Tensor, teacher_first: Tensor,
           student_pairs: Tensor, teacher_pairs: Tensor, temperature: float = 1.0, divergence: str = "forward_kl",
           top_k: int = 100, **params) -> Tensor:
    """Exact `divergence` on matched strings + the group entries + "other", plus `uld` over the rest.

    *_logprobs: group log-probabilities (`group_logprobs`) at T = 1; *_first: each group's first token.
    Shapes: (g, Vs + 1), (g, Vt + 1), (g,), (g,), pairs (M,), (M,) -> (g,)
    """
    s_temp, t_temp = temper(student_logprobs, temperature), temper(teacher_logprobs, temperature)
    if pairs_empty(student_pairs):
        return uld(s_temp, t_temp, top_k)
    student, teacher, s_aligned, t_aligned = aligned_support(student_logprobs, teacher_logprobs, student_first,
                                                             teacher_first, student_pairs, teacher_pairs)
    fn, defaults = DIVERGENCES[divergence]
    exact = fn(*normalise_pair(student, teacher, temperature), **{**defaults, **params})
    rest = uld(s_temp.masked_fill(s_aligned, NEG), t_temp.masked_fill(t_aligned, NEG), top_k)
    return exact + rest


def pairs_empty(pairs: Tensor) -> bool:
    return pairs.numel() == 0


def token_level(kind: str, student_logits: Tensor, teacher, temperature, divergence: str, top_k: int,
                missing: str, lse: Tensor | None, **params) -> Tensor:
    """`uld` or `hybrid` when both sides share one tokenizer (a plain signal): every token is a group and
    the vocabularies pair id with id, so `hybrid` is its divergence and `uld` compares the two sorted
    token distributions. Shapes: student_logits (N, V), teacher over (N,) -> (N,)"""
    from kdistill.losses.divergences import divergence as plain
    from kdistill.losses.signals import pair_logprobs

    if kind == "hybrid":
        return plain(divergence, student_logits, teacher, temperature, missing, lse, **params)
    return uld(*pair_logprobs(student_logits, teacher, temperature, missing, lse), top_k)
