"""The one reduction from per-token values to a scalar loss."""
from __future__ import annotations

import torch
from torch import Tensor


def reduce_tokens(values: Tensor, mask: Tensor | None, num_tokens: int | float | Tensor) -> Tensor:
    """Sum of `values` where `mask` is True, divided by the global token count `num_tokens`.

    `num_tokens` counts the True mask entries of every micro-batch and process of one optimizer step, so
    summing this over micro-batches (or all-reducing it over processes, or over chunks) gives exactly the
    full-batch mean. Zero tokens give 0, not NaN. `mask=None` counts every value (an already selected chunk).
    `torch.where`, not a product, drops masked tokens: a NaN or inf there must not leak into the sum.

    Shapes: values (B, T) or (N,), mask like values or None -> ()
    """
    total = values.sum() if mask is None else torch.where(mask, values, 0.0).sum()
    if isinstance(num_tokens, Tensor):
        return total / num_tokens.to(total.dtype).clamp(min=1)
    return total / max(float(num_tokens), 1.0)
