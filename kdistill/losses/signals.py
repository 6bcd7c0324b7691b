"""Teacher signals, dense or sparse, and how a divergence sees them: two log-distributions on one support.

A `DenseSignal` is the teacher's logits over the whole vocabulary, given as a tensor or as the teacher's
final hidden states plus output weight (then logits are computed a chunk of rows at a time, never whole).
A `SparseSignal` is K (id, log-probability) pairs per position: the teacher's top-k, or ids sampled from
the teacher with their empirical frequencies (`SparseSignal.from_counts`).

`pair_logprobs` turns (student logits, teacher signal, temperature) into student and teacher
log-probabilities on a common support; every divergence is a function of that pair, so each one works
with each signal. Missing-mass policy for sparse signals (the `missing_mass` option of a loss term):

- "renormalize": the support is the K ids. The teacher's K probabilities are renormalised to sum to 1,
  the student's logits at the K ids are softmaxed over the K. Nothing is assumed about other ids.
  At temperature T the teacher is softmax(logprobs / T) over the K: exactly the tempered full
  distribution restricted to the K ids.
- "residual": the support is the K ids plus one bucket "every other id". The teacher's bucket holds
  1 - sum(p_k) (empty when within rounding, 8·K·eps, of 0); the student's holds its exact probability of all ids not among the K
  (if the K ids cover the vocabulary, the bucket is dropped). Temperature divides the K + 1 bucket
  log-probabilities of both sides (a sparse signal cannot tell how the tempered mass outside the K splits).

Both policies equal the dense computation when K = V, and coincide when the K probabilities sum to 1
(sampled signals). Ids must be distinct among slots with a finite log-probability; slots padded with a
-inf log-probability may hold any id.

Support rule (padded vocabularies): an id whose teacher log-value is -inf is outside the teacher's
support; it is dropped from both distributions (the student is renormalised over the teacher's
support), so padding a vocabulary with -inf never changes a divergence and nothing becomes inf or NaN.
Dropped entries hold the finite sentinel `NEG` instead of -inf: logaddexp and logsumexp of -inf have
NaN gradients.

Every signal says its `form` (a class attribute), and whatever treats the kinds differently (the
objective, held-out metrics) reads it instead of asking for a class: DENSE and SPARSE (the two above: a
distribution at every position), MIXTURE (`mixture.Mixture`: several teachers' signals, each scored on
its own) and GROUPS (`cross.CrossSignal`: the teacher per aligned group of another tokenizer's tokens).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

NEG = -1e30  # log-value of an id outside the teacher's support; exp(NEG) == 0 in fp32 and fp64
MISSING_MASS = ("renormalize", "residual")
DENSE, SPARSE, MIXTURE, GROUPS = "dense", "sparse", "mixture", "groups"  # the `form` of a signal


def take_rows(x: Tensor, rows: Tensor) -> Tensor:
    """Rows of x's positions flattened in row-major order, without copying a non-contiguous x whole.

    Shapes: x (B, T, C), rows (R,) -> (R, C)
    """
    return x[torch.unravel_index(rows, x.shape[:-1])]


@dataclass(frozen=True)
class DenseSignal:
    """Teacher logits over the full vocabulary, or the hidden states and output weight that make them.

    Shapes: logits (B, T, V) | hidden (B, T, Dt) with weight (V, Dt)
    """

    form: ClassVar[str] = DENSE
    logits: Tensor | None = None
    hidden: Tensor | None = None
    weight: Tensor | None = None

    def __post_init__(self):
        if (self.logits is None) == (self.hidden is None or self.weight is None):
            raise ValueError("DenseSignal takes logits, or hidden and weight (DenseSignal.from_hidden)")

    @classmethod
    def from_hidden(cls, hidden: Tensor, weight: Tensor) -> "DenseSignal":
        """Teacher logits = hidden @ weight.T, computed one chunk of rows at a time when used."""
        return cls(hidden=hidden.detach(), weight=weight.detach())

    @property
    def vocab_size(self) -> int:
        return self.logits.shape[-1] if self.logits is not None else self.weight.shape[0]

    def take(self, rows: Tensor, out: Tensor | None = None) -> "DenseSignal":
        """The signal at `rows` of the flattened (B*T) positions, with logits materialised for them.

        out: a (≥R, V) buffer of the weight's dtype that hidden-state logits are written into (a chunked
        loss reuses one across its chunks: no fresh pages per chunk); ignored for given logits.
        Shapes: rows (R,) -> logits (R, V)
        """
        if self.logits is not None:
            return DenseSignal(logits=take_rows(self.logits, rows).detach())
        with torch.no_grad():
            hidden = take_rows(self.hidden, rows).to(self.weight.dtype)
            if out is None or out.dtype != self.weight.dtype or out.shape[0] < len(rows):
                return DenseSignal(logits=hidden @ self.weight.T)
            return DenseSignal(logits=torch.matmul(hidden, self.weight.T, out=out[:len(rows)]))


@dataclass(frozen=True)
class SparseSignal:
    """K teacher token ids per position with their log-probabilities under the full teacher distribution.

    Shapes: ids (B, T, K) long, logprobs (B, T, K)
    """

    form: ClassVar[str] = SPARSE
    ids: Tensor
    logprobs: Tensor

    def __post_init__(self):
        if self.ids.shape != self.logprobs.shape or self.ids.dtype != torch.long:
            raise ValueError(f"SparseSignal needs long ids and logprobs of one shape, got "
                             f"{tuple(self.ids.shape)} {self.ids.dtype} and {tuple(self.logprobs.shape)}")

    @classmethod
    def from_logits(cls, logits: Tensor, k: int) -> "SparseSignal":
        """The teacher's top-k of dense logits. Shapes: logits (B, T, V) -> ids, logprobs (B, T, k)"""
        logprobs, ids = fp32(logits.detach()).log_softmax(-1).topk(k, dim=-1)
        return cls(ids=ids, logprobs=logprobs)

    @classmethod
    def from_counts(cls, ids: Tensor, counts: Tensor) -> "SparseSignal":
        """Ids sampled from the teacher with their counts; the signal is their empirical distribution.

        Shapes: ids (B, T, K) long, counts (B, T, K) -> logprobs log(count / sum(count)), zero counts -inf
        """
        counts = fp32(counts)
        return cls(ids=ids, logprobs=(counts / counts.sum(-1, keepdim=True)).log())

    @property
    def k(self) -> int:
        return self.ids.shape[-1]

    def take(self, rows: Tensor) -> "SparseSignal":
        """The signal at `rows` of the flattened positions. Shapes: rows (R,) -> ids, logprobs (R, K)"""
        return SparseSignal(ids=take_rows(self.ids, rows), logprobs=take_rows(self.logprobs, rows).detach())


def fp32(x: Tensor) -> Tensor:
    """At least fp32: half precision is upcast, fp64 (gradcheck) stays fp64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _as_column(temperature: float | Tensor) -> float | Tensor:
    """A scalar stays a scalar; per-position temperatures (…) become (…, 1) to divide rows."""
    return temperature.unsqueeze(-1) if isinstance(temperature, Tensor) else temperature


def _residual_logprob(teacher_logprobs: Tensor) -> Tensor:
    """log(1 - sum(p_k)); -inf (an empty bucket) when that is within rounding of 0. Shapes: (..., K) -> (..., 1)

    K probabilities that sum to 1 (a sampled signal) must leave no bucket whatever the rounding: a
    bucket of 1e-16 would keep the student's own rest mass in the support and change its normalisation.
    """
    rest = -torch.expm1(teacher_logprobs.logsumexp(-1, keepdim=True))
    rounding = 8 * teacher_logprobs.shape[-1] * torch.finfo(rest.dtype).eps
    return torch.where(rest > rounding, rest, 0.0).log()


# rows whose student mass outside the K is below this get it exactly (scatter + logsumexp): log1mexp of a
# rounded log-sum of the K probabilities loses relative precision as the rest mass goes to 0
EXACT_REST_BELOW = 2.0 ** -10


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Maechler 2012). Shapes: any -> same"""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _student_rest_exact(logits: Tensor, ids: Tensor, lse: Tensor) -> Tensor:
    """log of the softmax mass of every id not among ids, by masking. Shapes: (M, V), (M, K), (M, 1) -> (M, 1)"""
    return logits.scatter(-1, ids, NEG).logsumexp(-1, keepdim=True) - lse


def student_sparse_logprobs(logits: Tensor, ids: Tensor, teacher_logprobs: Tensor,
                            lse: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Student log-probabilities at the K ids and of all other ids together, from one log-normaliser.

    log q_k = logits[ids] - lse; the rest is log(1 - sum q_k) over the slots with a finite teacher value,
    recomputed exactly (masked logsumexp) only on rows whose rest mass is below EXACT_REST_BELOW. So the
    full-vocabulary work is one logsumexp, which other terms can share through `lse`.
    Shapes: logits (..., V), ids and teacher_logprobs (..., K), lse (..., 1) -> (..., K), (..., 1)
    """
    if lse is None:
        lse = logits.logsumexp(-1, keepdim=True)
    at_ids = logits.gather(-1, ids) - lse
    captured = at_ids.masked_fill(~torch.isfinite(teacher_logprobs), NEG).logsumexp(-1, keepdim=True)
    limit = math.log1p(-EXACT_REST_BELOW)
    rest = log1mexp(captured.clamp(max=limit))
    tight = (captured > limit).reshape(-1).nonzero().squeeze(-1)
    if tight.numel():
        # padded slots (-inf teacher) point at slot 0's id so they do not remove a real id's mass
        real = torch.where(torch.isfinite(teacher_logprobs), ids, ids[..., :1]).reshape(-1, ids.shape[-1])
        exact = _student_rest_exact(logits.reshape(-1, logits.shape[-1])[tight], real[tight],
                                    lse.reshape(-1, 1)[tight])
        rest = rest.reshape(-1, 1).index_put((tight,), exact).reshape(rest.shape)
    return at_ids, rest


def support_values(student_logits: Tensor, teacher, missing: str = "renormalize",
                   lse: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Unnormalised student and teacher log-values on the common support (see the module docstring).

    `lse`: the student logits' logsumexp if already computed (only the residual policy uses it).
    Shapes: student_logits (..., V), teacher rows (...), lse (..., 1) -> (..., S), (..., S); S = V, K or K + 1
    """
    if isinstance(teacher, DenseSignal):
        return student_logits, fp32(teacher.logits)
    if missing not in MISSING_MASS:
        raise ValueError(f"missing mass policy must be one of {MISSING_MASS}, got {missing!r}")
    teacher_lp = fp32(teacher.logprobs)
    if missing == "renormalize":
        return student_logits.gather(-1, teacher.ids), teacher_lp
    student_at_ids, student_rest = student_sparse_logprobs(student_logits, teacher.ids, teacher_lp, lse)
    # when the K ids cover the vocabulary the bucket is empty; the teacher's 1 - sum(p) is rounding noise
    teacher_rest = _residual_logprob(teacher_lp).masked_fill(student_rest < NEG / 2, float("-inf"))
    student = torch.cat([student_at_ids, student_rest], dim=-1)
    return student, torch.cat([teacher_lp, teacher_rest], dim=-1)


def normalise_pair(student: Tensor, teacher: Tensor, temperature: float | Tensor = 1.0) -> tuple[Tensor, Tensor]:
    """Temper both log-value tensors, drop ids outside the teacher's support, log-softmax both.

    Shapes: student (..., S), teacher (..., S), temperature scalar or (...) -> (..., S), (..., S)
    """
    temperature = _as_column(temperature)
    student, teacher = student / temperature, teacher / temperature
    outside = torch.isneginf(teacher)
    if outside.any():
        student, teacher = student.masked_fill(outside, NEG), teacher.masked_fill(outside, NEG)
    return student.log_softmax(-1), teacher.log_softmax(-1)


def pair_logprobs(student_logits: Tensor, teacher, temperature: float | Tensor = 1.0,
                  missing: str = "renormalize", lse: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Student and teacher log-probabilities on one support, tempered, in fp32 (fp64 stays fp64).

    `teacher` is a DenseSignal or SparseSignal whose positions match the student's.
    `lse`: logsumexp(student_logits) (..., 1) when the caller already has it (see `support_values`).
    Shapes: student_logits (..., V), teacher (...), temperature scalar or (...) -> (..., S), (..., S)
    """
    student, teacher_values = support_values(fp32(student_logits), teacher, missing, lse)
    return normalise_pair(student, teacher_values.to(student.dtype), temperature)


def teacher_logprobs(teacher, temperature: float | Tensor = 1.0, missing: str = "renormalize") -> Tensor:
    """The teacher's own log-probabilities on its support (no student needed), e.g. for its entropy.

    Shapes: teacher (...) -> (..., S)
    """
    if isinstance(teacher, DenseSignal):
        values = fp32(teacher.logits)
    elif missing == "residual":
        lp = fp32(teacher.logprobs)
        values = torch.cat([lp, _residual_logprob(lp)], dim=-1)
    else:
        values = fp32(teacher.logprobs)
    values = values / _as_column(temperature)
    return values.masked_fill(torch.isneginf(values), NEG).log_softmax(-1)


def entropy(logprobs: Tensor) -> Tensor:
    """Entropy in nats of normalised log-probabilities; NEG entries count 0. Shapes: (..., S) -> (...)"""
    probs = logprobs.exp()
    return -(probs * torch.where(probs > 0, logprobs, 0.0)).sum(-1)
