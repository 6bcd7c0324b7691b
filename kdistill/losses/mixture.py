"""Several teachers' signals for one batch: a weighted sum of loss terms, or each row to its own teacher.

A `Mixture` is what a multi-teacher source returns for a batch; the objective evaluates every teacher
term once per part and adds them with the part's weight (CE, which needs no teacher, once). A part with
`local` scores only some rows: `local[p]` is the row of the part's own signal for flat position p, or -1
(teacher.combine=route: each example goes to one teacher, and its tokens are counted once).

A part may be in any form (`signals.py`): dense or sparse on the student's vocabulary, or a `CrossSignal`
(a teacher with another tokenizer, per aligned group). `mixed_loss` scores a mixture that holds groups:
the token-level parts (and CE) through the objective's one chunked pass, each grouped part through
`cross/objective.py` on its own, every value divided by the same global token count, so the loss is
Σ_i w_i · (teacher i's loss alone) + CE. A routed grouped part scores whole examples (`examples`: the
batch rows its signal was computed on), not positions.

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

from kdistill.losses.signals import DENSE, GROUPS, MIXTURE, DenseSignal


@dataclass(frozen=True)
class Part:
    """One teacher's share. Shapes: local (B*T,) long or None; rows (n,) long or None after `take`;
    examples (b,) long or None: the batch rows a routed grouped signal covers (None: every row)."""

    name: str
    weight: float
    signal: object
    local: Tensor | None = None
    rows: Tensor | None = None
    examples: Tensor | None = None


@dataclass(frozen=True)
class Mixture:
    form: ClassVar[str] = MIXTURE
    parts: tuple[Part, ...]

    @property
    def vocab_size(self) -> int:
        return self.parts[0].signal.vocab_size

    @property
    def grouped(self) -> bool:
        """True when a part is per aligned group (another tokenizer): `mixed_loss` scores it."""
        return any(p.signal.form == GROUPS for p in self.parts)

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


def _with_terms(objective, terms: list):
    """The objective with only `terms` (same chunking, scaling and options)."""
    import copy

    sub = copy.copy(objective)
    sub.terms = terms
    return sub


def _rows(x: Tensor | None, examples: Tensor | None) -> Tensor | None:
    return x if x is None or examples is None else x[examples]


def mixed_loss(objective, hidden: Tensor, head_weight: Tensor, mixture: Mixture, targets: Tensor, mask: Tensor,
               num_tokens, progress: float = 0.0, behaviour_logprobs: Tensor | None = None,
               token_weight: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """`Objective.__call__` for a mixture with grouped parts (module docstring): (loss, each term's value).

    Logs each term as the weighted sum over parts and `term/teacher` per part, as `_mixture_loss` does.
    Shapes: hidden (B, T, D), head_weight (V, D), targets (B, T), mask (B, T) -> (), dict
    """
    from kdistill.losses.cross.objective import cross_loss

    flat = tuple(p for p in mixture.parts if p.signal.form != GROUPS)
    rest = _with_terms(objective, objective.terms if flat else [t for t in objective.terms if t.kind == "ce"])
    teacher_terms = _with_terms(objective, [t for t in objective.terms if t.kind != "ce"])
    loss, logs = hidden.new_zeros((), dtype=torch.float32), {t.name: 0.0 for t in objective.terms}
    if rest.terms:
        out = rest(hidden, head_weight, Mixture(flat) if flat else None, targets, mask, num_tokens, progress,
                   behaviour_logprobs, token_weight)
        loss = loss + out.loss
        for name, v in out.terms.items():
            logs[name] = logs.get(name, 0.0) + v
    for part in (p for p in mixture.parts if p.signal.form == GROUPS and teacher_terms.terms):
        rows = part.examples
        value, values = cross_loss(teacher_terms, _rows(hidden, rows), head_weight, part.signal,
                                   _rows(targets, rows), _rows(mask, rows), num_tokens, progress,
                                   _rows(token_weight, rows))
        loss = loss + part.weight * value
        for name, v in values.items():
            logs[name] += part.weight * v
            logs[f"{name}/{part.name}"] = logs.get(f"{name}/{part.name}", 0.0) + v
    return loss, logs


def mixture_logprobs(logprobs: list[Tensor], weights: list[float]) -> Tensor:
    """log Σ w_i p_i. Shapes: each (..., V) log-probabilities -> (..., V)"""
    return torch.stack([lp + torch.tensor(w).log() for lp, w in zip(logprobs, weights)]).logsumexp(0)
