"""The optimizer (AdamW) and its learning-rate schedule: linear warmup, then cosine decay to
`min_lr_ratio` of the peak."""
from __future__ import annotations

import math

import torch


def make_optimizer(params: list, tc) -> torch.optim.Optimizer:
    """AdamW with betas (0.9, 0.95), fused where torch has a fused kernel (CPU and CUDA floating params).

    Fused is the same update in one pass over each tensor: 6.6x faster than the per-tensor loop for the
    demo student's 56.6M parameters on this CPU (0.044 s vs 0.29 s a step, 1 thread).
    """
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.95), fused=fused)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak LR for optimizer step `step` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine(optimizer, warmup: int, total, min_ratio: float):
    """`total`: the steps the schedule spans, or a function giving them (read at each step: a time budget
    sets the count once the first steps are timed, inside the warm-up)."""
    count = total if callable(total) else (lambda: total)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, count(), min_ratio))
