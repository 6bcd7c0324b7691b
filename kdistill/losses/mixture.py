"""Several teachers' signals for one batch: a weighted sum of loss terms, or each row to its own teacher.

A `Mixture` is what a multi-teacher source returns for a batch; the objective evaluates every teacher
term once per part and adds them with the part's weight (CE, which needs no teacher, once). A part with
`local` scores only some rows: `local[p]` is the row of the part's own signal for flat position p, or -1
(teacher.combine=route: each example goes to one teacher, and its tokens are counted once).

Summing a term over teachers with weights w (Σw = 1) distils a mixture of them:
- forward KL: Σ w_i KL(p_i ‖ q) = KL(p̄ ‖ q) + Σ w_i KL(p_i ‖ p̄) with p̄ = Σ w_i p_i; the second term does
  not depend on q, so the gradient is exactly that of distilling the arithmetic mixture p̄.
- reverse KL: Σ w_i KL(q ‖ p_i) = KL(q ‖ p̃) − log Z with p̃ = Π p_i^{w_i} / Z (the normalised geometric
  mixture, a product of experts); again the same gradient.
`mixture_logprobs` gives p̄ for held-out metrics against the mixture.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from kdistill.losses.signals import DENSE, MIXTURE, DenseSignal


@dataclass(frozen=True)
class Part:
    """One teacher's share. Shapes: local (B*T,) long or None; rows (n,) long or None after `take`."""

    name: str
    weight: float
    signal: object
    local: Tensor | None = None
    rows: Tensor | None = None


@dataclass(frozen=True)
class Mixture:
    form: ClassVar[str] = MIXTURE
    parts: tuple[Part, ...]

    @property
    def vocab_size(self) -> int:
        return self.parts[0].signal.vocab_size

    def take(self, rows: Tensor) -> "Mixture":
        """The mixture at `rows` of the flattened positions; a routed part keeps the rows it scores.

        Shapes: rows (R,) -> each part's signal over its rows (n_i,), `rows` (n_i,) indices into R
        """
        out = []
        for p in self.parts:
            if p.local is None:
                out.append(Part(p.name, p.weight, p.signal.take(rows)))
                continue
            loc = p.local[rows]
            picked = (loc >= 0).nonzero().squeeze(-1)
            if picked.numel():
                out.append(Part(p.name, p.weight, p.signal.take(loc[picked]), rows=picked))
        return Mixture(tuple(out))


@dataclass(frozen=True)
class MixtureDistribution:
    """The weighted arithmetic mixture p̄ = Σ w_i p_i of dense teacher signals, as a dense signal."""

    form: ClassVar[str] = DENSE
    weights: tuple[float, ...]
    signals: tuple[DenseSignal, ...]

    @property
    def vocab_size(self) -> int:
        return self.signals[0].vocab_size

    def take(self, rows: Tensor) -> DenseSignal:
        """Shapes: rows (R,) -> logits (R, V) = log p̄"""
        parts = [s.take(rows).logits.float().log_softmax(-1) + torch.tensor(w).log()
                 for w, s in zip(self.weights, self.signals)]
        return DenseSignal(logits=torch.stack(parts).logsumexp(0))


def mixture_logprobs(logprobs: list[Tensor], weights: list[float]) -> Tensor:
    """log Σ w_i p_i. Shapes: each (..., V) log-probabilities -> (..., V)"""
    return torch.stack([lp + torch.tensor(w).log() for lp, w in zip(logprobs, weights)]).logsumexp(0)
