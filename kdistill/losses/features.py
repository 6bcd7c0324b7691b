"""Per-token losses on intermediate activations: hidden states and attention (pure functions).

Student first, then teacher; computed in fp32 (fp64 stays fp64); every function returns per-token (or
per-sampled-row) values for `reduction.reduce_tokens`, never a mean of its own.

- hidden_mse: mean over channels of (s - t)², per token (so the scale does not grow with the width).
- hidden_cosine: 1 - cos(s, t), per token.
- attention_map: KL(teacher ‖ student) between attention distributions of a few query rows, from q and k
  (RoPE applied here), so no (B, H, T, T) map exists. Heads are matched GQA-aware (`attention_map`).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from kdistill.losses.signals import fp32


def hidden_mse(student: Tensor, teacher: Tensor) -> Tensor:
    """Shapes: student (N, D), teacher (N, D) -> (N,)"""
    return (fp32(student) - fp32(teacher)).pow(2).mean(-1)


def hidden_cosine(student: Tensor, teacher: Tensor) -> Tensor:
    """1 - cosine similarity; a zero vector counts as orthogonal. Shapes: (N, D), (N, D) -> (N,)"""
    s, t = fp32(student), fp32(teacher)
    dot = (s * t).sum(-1)
    return 1.0 - dot / (s.norm(dim=-1) * t.norm(dim=-1)).clamp_min(1e-12)


HIDDEN = {"hidden_mse": hidden_mse, "hidden_cosine": hidden_cosine, "attention_output": hidden_mse}


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary position embedding (LLaMA's rotate-half form). Shapes: x (..., hd), cos/sin (..., hd) -> (..., hd)"""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin


def sample_rows(mask: Tensor, count: int, phase: float = 0.0) -> tuple[Tensor, Tensor]:
    """`count` query positions per sequence, evenly spread over its counted positions, shifted by `phase`.

    weight makes the sampled rows an unbiased stand-in for all counted rows: n_b / count each (1 where a
    sequence has at most `count` counted positions, 0 for padding slots). A row's choice depends on its own
    mask only, so any split of the batch picks the same rows. Shapes: mask (B, T) -> (B, R), (B, R)"""
    b, r = mask.shape[0], count
    rows = torch.zeros(b, r, dtype=torch.long, device=mask.device)
    weight = torch.zeros(b, r, dtype=torch.float32, device=mask.device)
    for i in range(b):
        where = mask[i].nonzero().squeeze(-1)
        n = where.numel()
        if n <= r:
            rows[i, :n], weight[i, :n] = where, 1.0
        else:
            picks = ((torch.arange(r, device=mask.device) + phase) * n / r).long().clamp_max(n - 1)
            rows[i], weight[i] = where[picks], n / r
    return rows, weight


def heads_view(x: Tensor, heads: int) -> Tensor:
    """Shapes: (B, T, H*hd) -> (B, H, T, hd)"""
    b, t, _ = x.shape
    return x.view(b, t, heads, -1).transpose(1, 2)


def row_scores(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, rows: Tensor, heads: int, kv_heads: int,
               scaling: float) -> Tensor:
    """Pre-softmax scores of the sampled query rows against every key, per query head.

    Shapes: q (B, T, H*hd), k (B, T, Hkv*hd), cos/sin (B or 1, T, hd), rows (B, R) -> (B, H, R, T)"""
    b = q.shape[0]
    cos, sin = fp32(cos).expand(b, -1, -1), fp32(sin).expand(b, -1, -1)
    pick = rows[:, :, None].expand(-1, -1, q.shape[-1])
    q_rows = heads_view(torch.gather(fp32(q), 1, pick), heads)  # (B, H, R, hd)
    at = rows[:, :, None].expand(-1, -1, cos.shape[-1])
    q_rows = rotate(q_rows, torch.gather(cos, 1, at)[:, None], torch.gather(sin, 1, at)[:, None])
    keys = rotate(heads_view(fp32(k), kv_heads), cos[:, None], sin[:, None])  # (B, Hkv, T, hd)
    keys = keys.repeat_interleave(heads // kv_heads, dim=1)
    return q_rows @ keys.transpose(-1, -2) * scaling


def key_mask(rows: Tensor, attention_mask: Tensor) -> Tensor:
    """Keys each sampled row attends to: causal and not padding, and always itself (a padding slot of
    `sample_rows`, weight 0, then still has a distribution: no NaN). Shapes: (B, R), (B, T) -> (B, 1, R, T)"""
    t = attention_mask.shape[1]
    at = torch.arange(t, device=rows.device)[None, None, :]
    causal = at <= rows[:, :, None]
    return ((causal & attention_mask.bool()[:, None, :]) | (at == rows[:, :, None]))[:, None]


def relation_scores(scores_per_head: Tensor, relation_heads: int) -> Tensor:
    """Scores of `relation_heads` heads that each span H / relation_heads query heads (their q·k summed,
    rescaled to the wider head): how models with other head counts are compared.

    Shapes: (B, H, R, T) computed at scale hd^-1/2 -> (B, A, R, T)"""
    b, h, r, t = scores_per_head.shape
    span = h // relation_heads
    return scores_per_head.view(b, relation_heads, span, r, t).sum(2) / math.sqrt(span)


def masked_logprobs(scores: Tensor, keys: Tensor) -> Tensor:
    """log-softmax over allowed keys (-inf elsewhere). Shapes: (B, H, R, T), (B, 1, R, T) -> (B, H, R, T)"""
    return scores.masked_fill(~keys, float("-inf")).log_softmax(-1)


def group_mean_logprobs(logprobs: Tensor, kv_heads: int, keys: Tensor) -> Tensor:
    """log of the mean distribution over the query heads of each KV group; -inf outside `keys`, kept out
    of the logsumexp (all -inf there would make its gradient NaN). Shapes: (B, H, R, T) -> (B, G, R, T)"""
    b, h, r, t = logprobs.shape
    finite = logprobs.masked_fill(~keys, 0.0).view(b, kv_heads, h // kv_heads, r, t)
    return (finite.logsumexp(2) - math.log(h // kv_heads)).masked_fill(~keys, float("-inf"))


def row_kl(student_logprobs: Tensor, teacher_logprobs: Tensor, keys: Tensor) -> Tensor:
    """KL(teacher ‖ student) per head and row, 0 outside allowed keys. Shapes: (B, H, R, T) x2 -> (B, H, R)"""
    p = teacher_logprobs.exp()  # 0 outside keys; the logs are zeroed there, so no inf - inf, forward or back
    log_ratio = teacher_logprobs.masked_fill(~keys, 0.0) - student_logprobs.masked_fill(~keys, 0.0)
    return (p * log_ratio).sum(-1)


def match_heads(student_logprobs: Tensor, teacher_logprobs: Tensor, student_kv: int, teacher_kv: int,
                keys: Tensor) -> Tensor:
    """The teacher distribution each student head is compared with: the mean over the teacher query heads of
    the student head's KV group (same number of KV groups). Shapes: (B, Hs, R, T), (B, Ht, R, T) -> (B, Hs, R, T)"""
    mean = group_mean_logprobs(teacher_logprobs, teacher_kv, keys)  # (B, G, R, T)
    return mean.repeat_interleave(student_logprobs.shape[1] // student_kv, dim=1)


def attention_map(student: dict, teacher: dict, rows: Tensor, attention_mask: Tensor) -> Tensor:
    """Per sampled row: mean over heads of KL(teacher attention ‖ student attention).

    `student`/`teacher`: `activations.capture` "qk" entries (q, k, cos, sin, heads, kv_heads, scaling).
    Same heads and groups: head for head. Same number of KV groups only (a pruned student keeps fewer query
    heads per group): each student head against its group's mean teacher distribution. Otherwise gcd(Hs, Ht)
    relation heads on both sides. Shapes: rows (B, R), attention_mask (B, T) -> (B, R)"""
    keys = key_mask(rows, attention_mask)
    s_scores = row_scores(student["q"], student["k"], student["cos"], student["sin"], rows, student["heads"],
                          student["kv_heads"], student["scaling"])
    t_scores = row_scores(teacher["q"], teacher["k"], teacher["cos"], teacher["sin"], rows, teacher["heads"],
                          teacher["kv_heads"], teacher["scaling"])
    if (student["heads"], student["kv_heads"]) == (teacher["heads"], teacher["kv_heads"]):
        s_lp, t_lp = masked_logprobs(s_scores, keys), masked_logprobs(t_scores, keys)  # head for head
    elif student["kv_heads"] == teacher["kv_heads"]:
        s_lp = masked_logprobs(s_scores, keys)
        t_lp = match_heads(s_lp, masked_logprobs(t_scores, keys), student["kv_heads"], teacher["kv_heads"], keys)
    else:
        a = math.gcd(student["heads"], teacher["heads"])
        s_lp = masked_logprobs(relation_scores(s_scores, a), keys)
        t_lp = masked_logprobs(relation_scores(t_scores, a), keys)
    return row_kl(s_lp, t_lp, keys).mean(1)
