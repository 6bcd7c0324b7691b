"""A loss fused with the student's output layer: its (tokens x vocab) logits exist one chunk at a time.

`fused_linear_loss(hidden, weight, chunk_loss, chunk_size)` computes, for each chunk of rows,
logits = hidden[rows] @ weight.T, the chunk's scalar loss, and at once the loss's gradients with respect
to hidden[rows] and weight (Liger-Kernel's scheme). Backward only scales the stored gradients, so no
logits are kept between chunks or for backward. What the loss is stays in `chunk_loss`; this file only
chunks. The sum over chunks is exact because the loss is a sum over tokens divided by a global count.

Memory beyond the inputs: one chunk's working set (the budget below) + grad of hidden (N, D) + an fp32
grad of the weight (V, D), the size of the weight's own .grad.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

# fp32 (rows x V) tensors alive at the peak of one chunk's forward + backward, per kind of term; measured
# on CPU with `kdistill bench loss` (base: student logits, their grad, teacher logits, autograd temporaries).
LIVE_TENSORS_BASE = 4
LIVE_TENSORS_PER_TERM = {"ce": 2, "selective": 8, "default": 6}


def auto_chunk_size(vocab_size: int, memory_budget_mb: float, kinds: list[str]) -> int:
    """Rows per chunk so that one chunk's (rows x V) fp32 working set fits in the memory budget."""
    live = LIVE_TENSORS_BASE + sum(LIVE_TENSORS_PER_TERM.get(k, LIVE_TENSORS_PER_TERM["default"])
                                   for k in kinds)
    rows = int(memory_budget_mb * 2**20 // (live * vocab_size * 4))
    return max(8, rows // 8 * 8) if rows >= 8 else max(1, rows)


class _FusedLinearLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, chunk_loss, chunk_size):
        needs_hidden, needs_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        grad_hidden = torch.zeros_like(hidden) if needs_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if needs_weight else None
        total = torch.zeros((), dtype=dtype, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            h = hidden[rows]
            logits = (h @ weight.T).to(dtype).requires_grad_(needs_hidden or needs_weight)
            with torch.enable_grad():
                loss = chunk_loss(logits, rows)
            total += loss.detach()
            if not (needs_hidden or needs_weight):
                continue
            (grad_logits,) = torch.autograd.grad(loss, logits)
            grad_logits = grad_logits.to(h.dtype)
            if needs_hidden:
                grad_hidden[rows] = grad_logits @ weight
            if needs_weight:
                grad_weight.addmm_(grad_logits.T.to(dtype), h.to(dtype))
        if needs_weight:
            grad_weight = grad_weight.to(weight.dtype)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_hidden = grad_hidden * grad_output if grad_hidden is not None else None
        grad_weight = grad_weight * grad_output if grad_weight is not None else None
        return grad_hidden, grad_weight, None, None


def fused_linear_loss(hidden: Tensor, weight: Tensor, chunk_loss: Callable[[Tensor, slice], Tensor],
                      chunk_size: int) -> Tensor:
    """Σ over row chunks of chunk_loss(hidden[rows] @ weight.T in fp32, rows), never all logits at once.

    `chunk_loss` must be a sum over its rows (so chunks add up) and differentiable in its logits.
    Shapes: hidden (N, D), weight (V, D) -> ()
    """
    return _FusedLinearLoss.apply(hidden, weight, chunk_loss, max(1, int(chunk_size)))
