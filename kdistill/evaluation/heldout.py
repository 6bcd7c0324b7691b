"""Held-out agreement between student and teacher, token by token (the guide's distribution comparison).

Every metric is per token over the mask, summed over batches and divided by the total token count, at
temperature 1, in fp32. p is the teacher's next-token distribution, q the student's:

| key              | value per token                                                        |
|------------------|------------------------------------------------------------------------|
| kl               | KL(p ‖ q) in nats (`losses.divergences.forward_kl`)                    |
| js               | Jensen-Shannon ½ KL(p ‖ m) + ½ KL(q ‖ m), m = ½(p + q), in nats (`jsd`)  |
| top1_agreement   | 1 if argmax p = argmax q                                               |
| top10_agreement  | (ids in both top-10 lists) / 10, the guide's top-k agreement           |
| ppl_student/teacher | exp(mean NLL of the data's next tokens) for each model              |

Unlike the guide's `compare_distributions` (F.kl_div with `batchmean`, which sums over positions and
divides by sequences), these are means per token, so they do not grow with sequence length.
`kl_by_position[t]` is the mean KL of the tokens at position t of their sequence and `kl_quantiles`
gives the spread of the per-token KL (p50, p90, p99, max): a mean hides a few badly copied tokens.
"""
from __future__ import annotations

import math

import torch

from kdistill.data import packing
from kdistill.data.batches import to_device
from kdistill.evaluation.cross_metrics import cross_batch_sums, cross_summary
from kdistill.losses.divergences import divergence, forward_kl, jsd
from kdistill.losses.signals import GROUPS, SPARSE

TOP_K = 10
QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "max": 1.0}


def _logits(model, batch):
    return model(**packing.model_inputs(batch, model), use_cache=False).logits


def topk_agreement(student_logits, teacher_logits, k: int = TOP_K):
    """Share of the student's top-k ids that are among the teacher's top-k.

    Shapes: student_logits (..., V), teacher_logits (..., V) -> (...)
    """
    k = min(k, student_logits.shape[-1])
    s_top = student_logits.topk(k, dim=-1).indices
    t_top = teacher_logits.topk(k, dim=-1).indices
    return (s_top.unsqueeze(-1) == t_top.unsqueeze(-2)).any(-1).float().mean(-1)


@torch.no_grad()
def batch_sums(student_logits, teacher_logits, targets, mask) -> dict:
    """Sums over the masked tokens of one batch, plus each token's KL and position.

    Shapes: student_logits (B, T, V), teacher_logits (B, T, V'), targets (B, T), mask (B, T)
        -> dict of floats, and kl_tokens (N,), positions (N,) with N = mask.sum()
    """
    v = min(student_logits.shape[-1], teacher_logits.shape[-1])
    s, t = student_logits[..., :v].float(), teacher_logits[..., :v].float()
    mask = mask.bool()
    kl = forward_kl(s, t, temperature=1.0)
    js = jsd(s, t, temperature=1.0, beta=0.5)
    nll_s = torch.nn.functional.cross_entropy(s.transpose(1, 2), targets, reduction="none")
    nll_t = torch.nn.functional.cross_entropy(t.transpose(1, 2), targets, reduction="none")
    agree = s.argmax(-1) == t.argmax(-1)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return {"kl": kl[mask].sum().item(), "js": js[mask].sum().item(), "agree": agree[mask].sum().item(),
            "agree10": topk_agreement(s, t)[mask].sum().item(),
            "nll_student": nll_s[mask].sum().item(), "nll_teacher": nll_t[mask].sum().item(),
            "tokens": int(mask.sum()), "kl_tokens": kl[mask].cpu(), "positions": positions[mask].cpu()}


def kl_distribution(kl_tokens, positions) -> dict:
    """Per-position mean KL and quantiles of the per-token KL.

    Shapes: kl_tokens (N,), positions (N,) -> kl_by_position list (max position + 1), kl_quantiles dict
    """
    if kl_tokens.numel() == 0:
        return {"kl_by_position": [], "kl_quantiles": {k: 0.0 for k in QUANTILES}}
    kl_tokens = kl_tokens.double()
    sums = torch.bincount(positions, weights=kl_tokens)
    counts = torch.bincount(positions).clamp(min=1)
    q = torch.quantile(kl_tokens, torch.tensor(list(QUANTILES.values()), dtype=torch.float64))
    return {"kl_by_position": (sums / counts).tolist(),
            "kl_quantiles": {k: float(v) for k, v in zip(QUANTILES, q)}}


def summarize(totals: dict, kl_tokens, positions) -> dict:
    """Turn summed batch values into per-token metrics (0 tokens give 0 and perplexity 1)."""
    n = max(1, totals.get("tokens", 0))
    return {"kl": totals.get("kl", 0.0) / n, "js": totals.get("js", 0.0) / n,
            "top1_agreement": totals.get("agree", 0.0) / n, "top10_agreement": totals.get("agree10", 0.0) / n,
            "ppl_student": math.exp(min(50.0, totals.get("nll_student", 0.0) / n)),
            "ppl_teacher": math.exp(min(50.0, totals.get("nll_teacher", 0.0) / n)),
            "tokens": int(totals.get("tokens", 0)), **kl_distribution(kl_tokens, positions)}


def sparse_sums(logits, signal, targets) -> dict:
    """Sums over rows of the held-out metrics against a sparse teacher signal (a cache): kl and js on the
    stored support (the K ids and the rest bucket), top-1/top-10 against the stored ids ranked by
    probability, a target outside the K ids gets its even share of the rest for the teacher's perplexity.

    Shapes: logits (N, V), signal over (N,), targets (N,) -> dict of floats and kl_tokens (N,)
    """
    kl = divergence("forward_kl", logits, signal, 1.0, "residual")
    js = divergence("jsd", logits, signal, 1.0, "residual", beta=0.5)
    probs = signal.logprobs.exp()
    ranked = signal.ids.gather(-1, signal.logprobs.argsort(-1, descending=True))
    k = min(TOP_K, signal.k)
    agree10 = (logits.topk(k, -1).indices[:, :, None] == ranked[:, None, :k]).any(-1).float().mean(-1)
    hit = signal.ids == targets[:, None]
    share = (1 - probs.sum(-1)).clamp(min=1e-12) / max(1, logits.shape[-1] - signal.k)
    p_target = torch.where(hit.any(-1), (probs * hit).sum(-1), share)
    return {"kl": kl.sum().item(), "js": js.sum().item(), "agree": (logits.argmax(-1) == ranked[:, 0]).sum().item(),
            "agree10": agree10.sum().item(),
            "nll_student": torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item(),
            "nll_teacher": -p_target.clamp(min=1e-30).log().sum().item(), "tokens": len(targets),
            "kl_tokens": kl.cpu()}


def signal_sums(student_logits, signal, targets) -> dict:
    """`batch_sums` for rows of any teacher signal. Shapes: (N, V), signal over (N,), (N,) -> dict"""
    if signal.form == SPARSE:
        return sparse_sums(student_logits.float(), signal, targets)
    t = signal.take(torch.arange(len(targets), device=targets.device)).logits
    mask = torch.ones(1, len(targets), dtype=torch.bool, device=targets.device)
    sums = batch_sums(student_logits[None], t[None], targets[None], mask)
    sums.pop("positions")
    return sums


@torch.no_grad()
def heldout_metrics(student, source, batches, device, signals: dict | None = None) -> dict:
    """KL, JS, top-1/top-10 agreement, perplexities and the KL distribution on held-out batches, against
    any teacher source (`source.signal(batch, vocab)`). `signals` (a dict, filled on first use) keeps each
    batch's signal so the teacher runs once however often the student is evaluated.
    """
    totals: dict[str, float] = {}
    kl_parts, pos_parts, cross = [], [], False
    for i, batch in enumerate(batches):
        batch = to_device(batch, device)
        s_logits = _logits(student, batch)
        if signals is not None and i in signals:
            signal = signals[i]
        else:
            signal = source.signal(batch, s_logits.shape[-1])
            if signals is not None:
                signals[i] = signal
        if signal.form == GROUPS:  # another tokenizer: per aligned group and per byte
            cross = True
            for k, v in cross_batch_sums(s_logits, signal, batch).items():
                totals[k] = totals.get(k, 0.0) + v
            continue
        mask = batch["mask"].bool()
        for r in range(mask.shape[0]):  # one sequence at a time: JS and top-k make (T, V) temporaries
            rows = mask[r].nonzero().squeeze(-1)
            flat = r * mask.shape[1] + rows
            sums = signal_sums(s_logits[r, rows], signal.take(flat), batch["targets"][r, rows])
            kl_parts.append(sums.pop("kl_tokens"))
            at = packing.positions(batch["segments"][r:r + 1])[0, rows] if "segments" in batch else rows
            pos_parts.append(at.cpu())  # the position within its record
            for k, v in sums.items():
                totals[k] = totals.get(k, 0.0) + v
    if cross:
        return cross_summary(totals)
    kl_tokens = torch.cat(kl_parts) if kl_parts else torch.zeros(0)
    positions = torch.cat(pos_parts) if pos_parts else torch.zeros(0, dtype=torch.long)
    return summarize(totals, kl_tokens, positions)


class HeldoutEvaluator:
    """The held-out metrics of a student against one source; each batch's signal is computed once.

    `freeze()` computes every signal now and drops the source, so a teacher used only for the
    student's initialisation can be freed and still be measured against."""

    def __init__(self, source, batches: list[dict], device):
        self.against, self.source, self.batches, self.device = source.against, source, batches, device
        self.static = source.static
        self.signals: dict = {}

    def freeze(self, vocab_size: int) -> None:
        """Compute every held-out signal now (a source whose signal changes, like an EMA, is kept live)."""
        if not self.static:
            return
        for i, batch in enumerate(self.batches):
            if i not in self.signals:
                self.signals[i] = self.source.signal(to_device(batch, self.device), vocab_size)
        self.source = None

    def __call__(self, student) -> dict:
        memo = self.signals if self.static else None
        return heldout_metrics(student, self.source, self.batches, self.device, memo)


def heldout_key(against: str) -> str:
    """eval.json key of held-out metrics against a source: `heldout` (the teacher), `heldout_cache`, ..."""
    return "heldout" if against == "teacher" else f"heldout_{against}"


def eval_row(metrics: dict, against: str) -> dict:
    """metrics.jsonl fields: `eval_kl` ... against the teacher, `eval_cache_kl` ... against a cache."""
    prefix = "eval_" if against == "teacher" else f"eval_{against}_"
    return {prefix + "kl": metrics["kl"], prefix + "js": metrics["js"], prefix + "top1": metrics["top1_agreement"],
            prefix + "top10": metrics["top10_agreement"], prefix + "ppl": metrics["ppl_student"]}
