"""The objective on a `CrossSignal`: chunks of whole groups of student rows through the fused output layer.

A group's value needs the student's full distribution at its first row and the log-probabilities of its
later rows' targets, so the chunks of `fused.chunked.fused_linear_loss` are cut between groups (a group longer
than the chunk size is a chunk of its own). Per chunk: CE per student token, `uld`/`hybrid` per group;
every value is summed and divided by `num_tokens`, the global count of student tokens in the mask (the
loop's count), so chunking, accumulation and processes give the full-batch loss, and with one tokenizer
(one token per group) each term equals its plain counterpart. A group's token weight is its first row's.
"""
from __future__ import annotations

import torch
from torch import Tensor

from kdistill.losses.cross.groups import KINDS, CrossSignal, group_logprobs, hybrid, temper, uld
from kdistill.losses.divergences import cross_entropy
from kdistill.losses.fused.chunked import fused_linear_loss
from kdistill.losses.reduction import reduce_tokens
from kdistill.losses.signals import fp32


def group_starts(groups: Tensor) -> Tensor:
    """True at each row that starts a group. Shapes: groups (N,) nondecreasing long -> (N,) bool"""
    starts = torch.ones_like(groups, dtype=torch.bool)
    starts[1:] = groups[1:] != groups[:-1]
    return starts


def group_chunks(starts: Tensor, chunk_size: int) -> list[slice]:
    """Slices of at most chunk_size rows that cut only at group starts (a longer group: its own slice).

    Shapes: starts (N,) bool -> slices covering 0..N in order
    """
    begins = starts.nonzero().squeeze(-1).tolist() + [len(starts)]
    chunks, open_at = [], 0
    for prev, nxt in zip(begins, begins[1:]):
        if nxt - open_at > chunk_size and prev > open_at:
            chunks.append(slice(open_at, prev))
            open_at = prev
    if open_at < len(starts):
        chunks.append(slice(open_at, len(starts)))
    return chunks


def cross_value(term, student_glp: Tensor, teacher_glp: Tensor, s_first: Tensor, t_first: Tensor,
                signal: CrossSignal, temperature: float) -> Tensor:
    """One uld or hybrid term per group. Shapes: (g, Vs + 1), (g, Vt + 1), (g,), (g,) -> (g,)"""
    if term.kind == "uld":
        return uld(temper(student_glp, temperature), temper(teacher_glp, temperature), term.top_k)
    return hybrid(student_glp, teacher_glp, s_first, t_first, signal.student_pairs, signal.teacher_pairs,
                  temperature, term.divergence, term.top_k, **term.params)


def chunk_loss(objective, logits: Tensor, signal: CrossSignal, groups: Tensor, targets: Tensor, num_tokens,
               progress: float, logs: dict, weight: Tensor | None) -> Tensor:
    """Weighted loss of a chunk of whole groups, / num_tokens; adds each term's value into `logs`.

    Shapes: logits (n, V), groups (n,) global group ids, targets (n,), weight (n,) or None -> ()
    """
    starts = group_starts(groups)
    local = starts.cumsum(0) - 1
    first = starts.nonzero().squeeze(-1)
    logprobs = fp32(logits).log_softmax(-1)
    at_target = logprobs.gather(-1, targets[:, None]).squeeze(-1)
    later = torch.zeros(len(first), dtype=logprobs.dtype, device=logits.device).index_add(
        0, local, torch.where(starts, 0.0, at_target))
    student_glp = group_logprobs(logprobs[first], targets[first], later)
    teacher_glp, t_first = signal.take_groups(groups[first])
    total = 0.0
    for term in objective.terms:
        temperature = term.temperature(progress)
        if term.kind == "ce":
            values = cross_entropy(logits, targets, temperature, term.label_smoothing)
            w = weight
        else:
            values = cross_value(term, student_glp, teacher_glp, targets[first], t_first, signal, temperature)
            w = None if weight is None else weight[first]
        values = values if w is None else values * w
        logs[term.name] = logs[term.name] + reduce_tokens(values.detach(), None, num_tokens)
        scale = temperature ** 2 if objective.t2_scale and term.kind != "ce" else 1.0
        total = total + reduce_tokens(term.weight(progress) * scale * values, None, num_tokens)
    return total


def cross_loss(objective, hidden: Tensor, head_weight: Tensor, signal: CrossSignal, targets: Tensor,
               mask: Tensor, num_tokens, progress: float = 0.0, token_weight: Tensor | None = None):
    """`Objective.__call__` for a CrossSignal: (loss, each term's value) as in LossOutput.

    Shapes: hidden (B, T, D), head_weight (V, D), targets (B, T), mask (B, T) -> (), dict
    """
    plain = [t.name for t in objective.terms if t.kind not in ("ce", *KINDS)]
    if plain:
        raise ValueError(f"loss terms {plain} compare token by token; across tokenizers use kind hybrid or uld")
    rows = mask.reshape(-1).nonzero().squeeze(-1)
    groups = signal.group_of.to(rows.device)[rows]
    if (groups < 0).any():
        raise ValueError("a masked student position is in no aligned group; the cross-tokenizer source "
                         "must mask exactly the grouped positions")
    student_rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows)
    flat_targets = targets.reshape(-1)[rows]
    weight = None if token_weight is None else token_weight.reshape(-1).float()[rows]
    logs = {t.name: torch.zeros((), device=hidden.device) for t in objective.terms}
    vocab = max(head_weight.shape[0], signal.teacher.vocab_size)
    chunks = group_chunks(group_starts(groups), objective.chunk_size_for(vocab))

    def loss_of(logits: Tensor, chunk: slice) -> Tensor:
        return chunk_loss(objective, logits, signal, groups[chunk], flat_targets[chunk], num_tokens, progress,
                          logs, None if weight is None else weight[chunk])

    loss = fused_linear_loss(student_rows, head_weight, loss_of, chunks)
    return loss, {name: float(v) for name, v in logs.items()}
