"""The training objective: a weighted list of loss terms, evaluated on the student's output layer in chunks.

    objective = build_objective([{"kind": "forward_kl", "weight": 1.0, "temperature": 2.0},
                                 {"kind": "ce", "weight": 0.5, "label_smoothing": 0.1}])
    out = objective(hidden, head_weight, teacher, targets, mask, num_tokens, progress)
    out.loss.backward(); log(out.terms)

loss = Σ_tokens Σ_terms weight · s · value(token) / num_tokens, where s = T² for teacher terms when
`t2_scale` (Hinton et al.: keeps soft-target gradients comparable across temperatures; per token for
the entropy temperature) and 1 otherwise. `out.terms[name]` is each term's unweighted, unscaled value
with the same normalisation, so it too sums over micro-batches. Only masked rows are computed at all.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from kdistill.base.errors import ConfigError
from kdistill.losses import cross, policy
from kdistill.losses.config import Term, number, parse_terms
from kdistill.losses.divergences import cross_entropy, divergence
from kdistill.losses.feature_terms import PARSERS as FEATURE_PARSERS
from kdistill.losses.feature_terms import FeatureTerm
from kdistill.losses.fused import closed_form
from kdistill.losses.fused.chunked import auto_chunk_size, fused_linear_loss
from kdistill.losses.mixture import Mixture, mixed_loss
from kdistill.losses.reduction import reduce_tokens
from kdistill.losses.schedules import EntropyTemperature
from kdistill.losses.selective import kept, selective
from kdistill.losses.signals import GROUPS, MIXTURE, DenseSignal, SparseSignal, fp32

TOKEN_WEIGHT = "token_weight"  # extras key: a float weight per row (0 = the row does not count)


@dataclass
class LossOutput:
    """loss: scalar to backpropagate; terms: name -> unweighted value (detached, summable over micro-batches)."""

    loss: Tensor
    terms: dict[str, float]


class StudentNormaliser:
    """logsumexp of one chunk's student logits at a fixed temperature, computed once and shared by terms.

    CE at temperature T and the residual sparse KD term both need the student's log-normaliser; computing
    it once saves a full-vocabulary pass forward and backward (autograd sums both terms' gradients).
    """

    def __init__(self, student_logits: Tensor):
        self.logits, self.cache = student_logits, {}

    def __call__(self, temperature: float | Tensor) -> Tensor | None:
        """lse of logits / temperature (..., 1) for a scalar temperature; None for per-token ones."""
        if isinstance(temperature, Tensor):
            return None
        key = float(temperature)
        if key not in self.cache:
            logits = fp32(self.logits)
            self.cache[key] = (logits if key == 1.0 else logits / key).logsumexp(-1, keepdim=True)
        return self.cache[key]


def term_values(term: Term, student_logits: Tensor, teacher, targets: Tensor | None,
                progress: float, normaliser: StudentNormaliser | None = None,
                extras: dict | None = None) -> tuple[Tensor, float | Tensor]:
    """One term's per-token value and the temperature it used; `extras`: the rows' rollout inputs
    (`policy.prepare`). Shapes: student_logits (N, V) -> (N,), () or (N,)"""
    normaliser = normaliser or StudentNormaliser(student_logits)
    if isinstance(term.temperature, EntropyTemperature):
        temperature = term.temperature(teacher, term.missing_mass)
    else:
        temperature = term.temperature(progress)
    if term.kind == "ce":
        return cross_entropy(student_logits, targets, temperature, term.label_smoothing,
                             normaliser(temperature)), temperature
    if term.kind == policy.KIND:
        return policy.term_value(term, student_logits, teacher, targets, temperature, extras), temperature
    if term.kind in cross.KINDS:  # one tokenizer: every token is a group (a CrossSignal goes to cross/objective.py)
        lse = normaliser(1.0) if isinstance(teacher, SparseSignal) and term.missing_mass == "residual" else None
        return cross.token_level(term.kind, student_logits, teacher, temperature, term.divergence, term.top_k,
                                 term.missing_mass, lse, **term.params), temperature
    if term.kind == "selective":
        return selective(student_logits, teacher, temperature, term.divergence, term.top_k,
                         term.entropy_threshold, term.missing_mass, **term.params), temperature
    # the residual policy's bucket log-probabilities are formed at T = 1, then tempered (see signals)
    lse = normaliser(1.0) if isinstance(teacher, SparseSignal) and term.missing_mass == "residual" else None
    return divergence(term.divergence, student_logits, teacher, temperature, term.missing_mass, lse,
                      **term.params), temperature


def log_per_token(term: Term, temperature, teacher, num_tokens, logs: dict) -> None:
    """Token means of what a term decides per token, added into `logs` like the term's value (sums over
    chunks, micro-batches and processes give the step's mean): the entropy temperature
    (`temperature/NAME`) and the share of positions `selective` trains on (`kept/NAME`)."""
    if isinstance(temperature, Tensor) and temperature.dim():
        key = f"temperature/{term.name}"
        logs[key] = logs.get(key, 0.0) + reduce_tokens(temperature.detach().float(), None, num_tokens)
    if term.kind == "selective":
        keep = kept(teacher, temperature, term.entropy_threshold, term.missing_mass).float()
        logs[f"kept/{term.name}"] = logs.get(f"kept/{term.name}", 0.0) + reduce_tokens(keep, None, num_tokens)


class Objective:
    """Weighted loss terms; call it with the student's head input and weight (see `__call__`)."""

    def __init__(self, terms: list[Term], t2_scale: bool = True, chunk_size: int | None = None,
                 memory_budget_mb: float = 256.0):
        # feature terms (hidden states, attention) are computed by train/features.FeatureLoss, not here
        self.features = [t for t in terms if isinstance(t, FeatureTerm)]
        self.terms, self.t2_scale = [t for t in terms if not isinstance(t, FeatureTerm)], t2_scale
        self.chunk_size, self.memory_budget_mb = chunk_size, memory_budget_mb
        self.use_closed_form = True  # forward KL + CE on a dense teacher: chunk gradients without autograd

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(t.kind for t in self.terms)

    @property
    def needs_ce_targets(self) -> bool:
        return any(t.kind == "ce" for t in self.terms)

    @property
    def needs_teacher(self) -> bool:
        return any(t.kind != "ce" for t in self.terms)

    def chunk_size_for(self, vocab_size: int, sparse: bool = False, teachers: int = 1,
                       closed: bool = False) -> int:
        """Rows per chunk: the override, or the most that fit the memory budget for this vocabulary.

        sparse: the teacher signal is a SparseSignal (its terms keep no teacher (rows x V) logits);
        teachers: how many teachers each teacher term is evaluated for (a Mixture's parts);
        closed: the chunks take the closed form (fused/closed_form.py), which keeps no autograd graph.
        """
        if closed and not self.chunk_size:
            return auto_chunk_size(vocab_size, self.memory_budget_mb, [], live=closed_form.LIVE_TENSORS)
        kinds = [k if k == "ce" or not sparse else "sparse" for k in self.kinds for _ in
                 range(1 if k == "ce" else teachers)]
        costs = [*kinds, *("entropy_temperature" for t in self.terms
                           if isinstance(t.temperature, EntropyTemperature))]
        return self.chunk_size or auto_chunk_size(vocab_size, self.memory_budget_mb, costs)

    def schedule_values(self, progress: float = 0.0) -> dict[str, float]:
        """Current weight and temperature of each term, for logging (entropy temperatures are per token)."""
        values = {f"weight/{t.name}": t.weight(progress) for t in (*self.terms, *self.features)}
        values.update({f"temperature/{t.name}": t.temperature(progress) for t in self.terms
                       if not isinstance(t.temperature, EntropyTemperature)})
        return values

    def rows_loss(self, student_logits: Tensor, teacher, targets: Tensor | None, num_tokens,
                  progress: float, logs: dict[str, Tensor], extras: dict | None = None) -> Tensor:
        """Weighted loss of already selected rows, / num_tokens; adds each term's value into `logs`.

        Shapes: student_logits (N, V), teacher over (N,), targets (N,) -> ()
        """
        weight = (extras or {}).get(TOKEN_WEIGHT)
        if teacher is not None and teacher.form == MIXTURE:
            return self._mixture_loss(student_logits, teacher, targets, num_tokens, progress, logs, weight)
        total, normaliser = 0.0, StudentNormaliser(student_logits)
        for term in self.terms:
            values, temperature = term_values(term, student_logits, teacher, targets, progress, normaliser, extras)
            values = values if weight is None else values * weight
            logs[term.name] = logs[term.name] + reduce_tokens(values.detach(), None, num_tokens)
            log_per_token(term, temperature, teacher, num_tokens, logs)
            scale = temperature ** 2 if self.t2_scale and term.kind != "ce" else 1.0
            total = total + term.weight(progress) * scale * values
        return reduce_tokens(total, None, num_tokens)

    def _mixture_loss(self, student_logits: Tensor, mixture: Mixture, targets: Tensor | None, num_tokens,
                      progress: float, logs: dict[str, Tensor], weight: Tensor | None = None) -> Tensor:
        """`rows_loss` with several teachers: each teacher term once per part, times the part's weight,
        only on the part's rows; CE once. Logs each term (the weighted sum over parts) and `term/teacher`."""
        loss, whole = 0.0, StudentNormaliser(student_logits)
        for term in self.terms:
            parts = [None] if term.kind == "ce" else mixture.parts
            for part in parts:
                logits, norm, sub_targets = student_logits, whole, targets
                if part is not None and part.rows is not None:
                    logits, sub_targets = student_logits[part.rows], None if targets is None else targets[part.rows]
                    norm = StudentNormaliser(logits)
                values, temperature = term_values(term, logits, None if part is None else part.signal, sub_targets,
                                                  progress, norm)
                if weight is not None:
                    values = values * (weight if part is None or part.rows is None else weight[part.rows])
                share = 1.0 if part is None else part.weight
                if part is not None and part is mixture.parts[0] and part.rows is None:  # the first teacher's
                    log_per_token(term, temperature, part.signal, num_tokens, logs)
                value = reduce_tokens(values.detach(), None, num_tokens)
                logs[term.name] = logs[term.name] + share * value
                if part is not None:
                    key = f"{term.name}/{part.name}"
                    logs[key] = logs.get(key, 0.0) + value
                scale = temperature ** 2 if self.t2_scale and term.kind != "ce" else 1.0
                loss = loss + reduce_tokens(share * term.weight(progress) * scale * values, None, num_tokens)
        return loss

    def _check(self, vocab_size: int, teacher, targets) -> None:
        if self.needs_teacher and teacher is None:
            raise ValueError(f"loss terms {self.kinds} need a teacher signal")
        if self.needs_ce_targets and targets is None:
            raise ValueError("a 'ce' loss term needs targets")
        teacher_vocab = getattr(teacher, "vocab_size", vocab_size)
        if teacher_vocab != vocab_size:
            raise ValueError(f"teacher vocabulary {teacher_vocab} != student vocabulary {vocab_size}; "
                             "pad the smaller one with -inf logits")

    def __call__(self, hidden: Tensor, head_weight: Tensor, teacher, targets: Tensor | None, mask: Tensor,
                 num_tokens, progress: float = 0.0, behaviour_logprobs: Tensor | None = None,
                 token_weight: Tensor | None = None) -> LossOutput:
        """Loss of the student whose logits are hidden @ head_weight.T, computed a chunk of rows at a time.

        teacher: DenseSignal | SparseSignal | Mixture | CrossSignal | None (CE only). num_tokens: True mask
        entries of the whole optimizer step (all micro-batches and processes). progress: step / total_steps
        for schedules. behaviour_logprobs (B, T): log-probability of each target under what sampled it (a rollout).
        Shapes: hidden (B, T, D), head_weight (V, D), teacher over (B, T), targets (B, T), mask (B, T) -> ()
        """
        self._check(head_weight.shape[0], teacher, targets)
        if teacher is not None and teacher.form == GROUPS:  # another tokenizer: the loss is per aligned group
            from kdistill.losses.cross.objective import cross_loss

            return LossOutput(*cross_loss(self, hidden, head_weight, teacher, targets, mask, num_tokens, progress,
                                          token_weight))
        if teacher is not None and teacher.form == MIXTURE and teacher.grouped:  # several tokenizers among teachers
            return LossOutput(*mixed_loss(self, hidden, head_weight, teacher, targets, mask, num_tokens, progress,
                                          behaviour_logprobs, token_weight))
        teacher = teacher if self.needs_teacher else None
        rows = mask.reshape(-1).nonzero().squeeze(-1)
        student_rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows)
        flat_targets = None if targets is None else targets.reshape(-1)
        logs = {t.name: torch.zeros((), device=hidden.device) for t in self.terms}

        # the closed form's terms have no per-token extras (policy.prepare gives none for them)
        closed = self.use_closed_form and token_weight is None and closed_form.eligible(self.terms, teacher, {})
        teachers = len(teacher.parts) if teacher is not None and teacher.form == MIXTURE else 1
        chunk_size = self.chunk_size_for(head_weight.shape[0], isinstance(teacher, SparseSignal), teachers, closed)
        extras = policy.prepare(self.terms, policy.head_logits(hidden, head_weight), teacher, targets, mask,
                                behaviour_logprobs, progress, chunk_size)
        if token_weight is not None:
            extras = {**extras, TOKEN_WEIGHT: token_weight.reshape(-1).float()}
        if extras and closed:
            raise AssertionError(f"closed-form terms {self.kinds} got per-token extras {sorted(extras)}")

        # the teacher's chunk logits from hidden states: one block reused by every chunk (see fused/chunked.py)
        teacher_out = teacher.weight.new_empty(min(len(rows), chunk_size), teacher.weight.shape[0]) \
            if isinstance(teacher, DenseSignal) and teacher.logits is None else None

        def chunk_loss(logits: Tensor, chunk: slice) -> Tensor | tuple[Tensor, Tensor]:
            r = rows[chunk]
            if teacher_out is not None:
                signal = teacher.take(r, teacher_out)
            else:
                signal = None if teacher is None else teacher.take(r)
            chunk_targets = None if flat_targets is None else flat_targets[r]
            if closed:
                return closed_form.chunk_loss_and_grad(self.terms, self.t2_scale, logits, signal, chunk_targets,
                                                       num_tokens, progress, logs)
            return self.rows_loss(logits, signal, chunk_targets, num_tokens, progress, logs,
                                  {k: v[r] for k, v in extras.items()})

        loss = fused_linear_loss(student_rows, head_weight, chunk_loss, chunk_size)
        return LossOutput(loss, {name: float(v) for name, v in logs.items()})

    def from_logits(self, student_logits: Tensor, teacher, targets: Tensor | None, mask: Tensor,
                    num_tokens, progress: float = 0.0, behaviour_logprobs: Tensor | None = None,
                    token_weight: Tensor | None = None) -> LossOutput:
        """The same loss on full student logits with plain autograd (evaluation, reference for tests).

        Shapes: student_logits (B, T, V), teacher over (B, T), targets (B, T), mask (B, T) -> ()
        """
        self._check(student_logits.shape[-1], teacher, targets)
        rows = mask.reshape(-1).nonzero().squeeze(-1)
        logits = student_logits.reshape(-1, student_logits.shape[-1]).index_select(0, rows)
        logs = {t.name: torch.zeros((), device=logits.device) for t in self.terms}
        extras = policy.prepare(self.terms, policy.full_logits(student_logits), teacher, targets, mask,
                                behaviour_logprobs, progress, len(rows) or 1)
        if token_weight is not None:
            extras = {**extras, TOKEN_WEIGHT: token_weight.reshape(-1).float()}
        loss = self.rows_loss(logits, None if teacher is None else teacher.take(rows),
                              None if targets is None else targets.reshape(-1)[rows], num_tokens, progress, logs,
                              {k: v[rows] for k, v in extras.items()})
        return LossOutput(loss, {name: float(v) for name, v in logs.items()})


def build_objective(terms: list[dict], t2_scale: bool = True, chunk_size: int | None = None,
                    memory_budget_mb: float = 256.0, key: str = "loss") -> Objective:
    """Validate the config's terms (ConfigError naming `key.terms[i]...`) and build the objective.

    chunk_size None: automatic from the vocabulary and `memory_budget_mb`; an int overrides it.
    """
    if not isinstance(t2_scale, bool):
        raise ConfigError(f"{key}.t2_scale: expected true or false, got {t2_scale!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ConfigError(f"{key}.chunk_size: expected a whole number >= 1 or null (automatic), got {chunk_size!r}")
    budget = number(memory_budget_mb, f"{key}.memory_budget_mb", 0.0, low_open=True)
    return Objective(parse_terms(terms, key, FEATURE_PARSERS), t2_scale, chunk_size, budget)
