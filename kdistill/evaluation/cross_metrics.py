"""Held-out agreement across tokenizers: per aligned group and per byte of text, not per token.

When the teacher's signal is a `CrossSignal` (the student reads another tokenizer), `heldout_metrics`
measures these instead of its per-token ones, over the held-out responses:

| key                  | value                                                                   |
|----------------------|-------------------------------------------------------------------------|
| kl, js               | KL(p ‖ q) and JS per group on the hybrid's aligned entries (matched strings, the group's own text, the rest), nats |
| top1_agreement       | share of groups whose most likely aligned entry is the same named string on both sides, over the groups where at least one side names a string |
| top10_agreement      | (named entries in both top-10 lists) / 10, per group                     |
| top1_both_other      | share of groups where both sides' most likely entry is the pooled "other" bucket (left out of top1_agreement: it names no string) |
| uld                  | the sorted-probability distance (top 100) of the two group distributions |
| bpb_student, bpb_teacher | bits per byte: −log2 of each model's probability of the response text, / its bytes |
| ppl_student, ppl_teacher | exp(mean NLL per token), each over its own tokens (not comparable: bpb is) |
| groups, tokens, teacher_tokens, bytes | how much was measured                                  |

Both models read the same bytes, so bits per byte compares them directly; the EOS is scored too (0 bytes).
"""
from __future__ import annotations

import math

import torch

from kdistill.losses.cross.groups import aligned_support, group_logprobs, uld
from kdistill.losses.cross.objective import group_starts
from kdistill.losses.divergences import forward_kl_from_logprobs, jsd_from_logprobs
from kdistill.losses.signals import normalise_pair


@torch.no_grad()
def cross_row_sums(student_logits, signal, targets, flat_rows) -> dict:
    """Sums over the groups of one sequence's rows. Shapes: student_logits (n, V), targets (n,), flat_rows (n,)"""
    groups = signal.group_of.to(flat_rows.device)[flat_rows]
    starts = group_starts(groups)
    first = starts.nonzero().squeeze(-1)
    lp = student_logits.float().log_softmax(-1)
    at = lp.gather(-1, targets[:, None]).squeeze(-1)
    later = torch.zeros(len(first), device=lp.device).index_add(0, starts.cumsum(0) - 1, torch.where(starts, 0.0, at))
    s_glp = group_logprobs(lp[first], targets[first], later)
    t_glp, t_first = signal.take_groups(groups[first])
    s_vals, t_vals, _, _ = aligned_support(s_glp, t_glp, targets[first], t_first, signal.student_pairs,
                                           signal.teacher_pairs)
    s_lp, t_lp = normalise_pair(s_vals, t_vals)
    return {"kl": forward_kl_from_logprobs(s_lp, t_lp).sum().item(),
            "js": jsd_from_logprobs(s_lp, t_lp, 0.5).sum().item(), **support_agreement(s_lp, t_lp),
            "uld": uld(s_glp, t_glp, 100).sum().item(), "nll_student": -at.sum().item(),
            "nll_teacher": -t_glp.gather(-1, t_first[:, None]).sum().item(), "groups": len(first),
            "tokens": len(targets)}


def support_agreement(s_lp, t_lp, k: int = 10) -> dict:
    """Agreement sums on the aligned support, whose last entry is the pooled "other" bucket: it names no
    string, so two sides that both put it first do not agree on anything (counted apart, `both_other`).
    Shapes: s_lp, t_lp (g, S) -> sums over the g groups"""
    other = s_lp.shape[-1] - 1
    s_arg, t_arg = s_lp.argmax(-1), t_lp.argmax(-1)
    both_other = (s_arg == other) & (t_arg == other)
    k = min(k, s_lp.shape[-1])
    s_top, t_top = s_lp.topk(k, -1).indices, t_lp.topk(k, -1).indices
    shared = ((s_top[:, :, None] == t_top[:, None, :]).any(-1) & (s_top != other)).float().sum(-1) / k
    return {"agree": ((s_arg == t_arg) & ~both_other).sum().item(), "agree10": shared.sum().item(),
            "both_other": both_other.sum().item()}


def cross_batch_sums(student_logits, signal, batch) -> dict:
    """`cross_row_sums` for every sequence of a batch, plus its teacher tokens and response bytes."""
    mask, totals = batch["mask"].bool(), {}
    for r in range(mask.shape[0]):
        rows = mask[r].nonzero().squeeze(-1)
        if rows.numel():
            sums = cross_row_sums(student_logits[r, rows], signal, batch["targets"][r, rows], r * mask.shape[1] + rows)
            for key, v in sums.items():
                totals[key] = totals.get(key, 0.0) + v
    totals["teacher_tokens"] = signal.teacher_tokens  # the batch may hold several teachers' tokens
    totals["bytes"] = int(batch["bytes"].sum())
    return totals


def cross_summary(totals: dict) -> dict:
    """Per-group, per-byte and per-token means of summed `cross_batch_sums` (0 groups give 0)."""
    g, n_bytes = max(1, totals.get("groups", 0)), max(1, totals.get("bytes", 0))
    per_token = {f"ppl_{who}": math.exp(min(50.0, totals.get(f"nll_{who}", 0.0) / max(1, totals.get(count, 0))))
                 for who, count in (("student", "tokens"), ("teacher", "teacher_tokens"))}
    return {"kl": totals.get("kl", 0.0) / g, "js": totals.get("js", 0.0) / g,
            "top1_agreement": totals.get("agree", 0.0) / max(1, totals.get("groups", 0) - totals.get("both_other", 0)),
            "top10_agreement": totals.get("agree10", 0.0) / g, "top1_both_other": totals.get("both_other", 0.0) / g,
            "uld": totals.get("uld", 0.0) / g,
            "bpb_student": totals.get("nll_student", 0.0) / (math.log(2) * n_bytes),
            "bpb_teacher": totals.get("nll_teacher", 0.0) / (math.log(2) * n_bytes), **per_token,
            "groups": int(totals.get("groups", 0)), "tokens": int(totals.get("tokens", 0)),
            "teacher_tokens": int(totals.get("teacher_tokens", 0)), "bytes": int(totals.get("bytes", 0)),
            "per": "aligned group"}
