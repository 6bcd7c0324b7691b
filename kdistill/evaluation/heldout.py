"""Held-out agreement between student and teacher, token by token.

All metrics are per token over the mask, summed over batches and divided by the total token count:
KL(teacher || student) at T=1, top-1 agreement (argmaxes equal), and each model's perplexity
exp(mean NLL of the data's next tokens).
"""
from __future__ import annotations

import math

import torch

from ..losses.divergences import forward_kl


def _logits(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits


@torch.no_grad()
def batch_sums(student_logits, teacher_logits, targets, mask) -> dict:
    """Sums over the masked tokens of one batch.

    Shapes: student_logits (B, T, V), teacher_logits (B, T, V'), targets (B, T), mask (B, T) -> dict of floats
    """
    v = min(student_logits.shape[-1], teacher_logits.shape[-1])
    s, t = student_logits[..., :v].float(), teacher_logits[..., :v].float()
    kl = forward_kl(s, t, temperature=1.0)
    nll_s = torch.nn.functional.cross_entropy(s.transpose(1, 2), targets, reduction="none")
    nll_t = torch.nn.functional.cross_entropy(t.transpose(1, 2), targets, reduction="none")
    agree = s.argmax(-1) == t.argmax(-1)
    return {"kl": kl[mask].sum().item(), "agree": agree[mask].sum().item(),
            "nll_student": nll_s[mask].sum().item(), "nll_teacher": nll_t[mask].sum().item(),
            "tokens": int(mask.sum())}


@torch.no_grad()
def heldout_metrics(student, teacher, batches, device, teacher_logits_cache=None) -> dict:
    """KL, top-1 agreement and perplexities on held-out batches.

    `teacher_logits_cache` (a list, filled on first use) avoids running the teacher again at each eval.
    """
    totals: dict[str, float] = {}
    for i, batch in enumerate(batches):
        batch = {k: v.to(device) for k, v in batch.items()}
        if teacher_logits_cache is not None and i < len(teacher_logits_cache):
            t_logits = teacher_logits_cache[i]
        else:
            t_logits = _logits(teacher, batch)
            if teacher_logits_cache is not None:
                teacher_logits_cache.append(t_logits)
        sums = batch_sums(_logits(student, batch), t_logits, batch["targets"], batch["mask"])
        for k, v in sums.items():
            totals[k] = totals.get(k, 0.0) + v
    n = max(1, totals.get("tokens", 0))
    return {"kl": totals.get("kl", 0.0) / n, "top1_agreement": totals.get("agree", 0.0) / n,
            "ppl_student": math.exp(min(50.0, totals.get("nll_student", 0.0) / n)),
            "ppl_teacher": math.exp(min(50.0, totals.get("nll_teacher", 0.0) / n)),
            "tokens": int(totals.get("tokens", 0))}
