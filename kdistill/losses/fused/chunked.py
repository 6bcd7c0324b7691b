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

# fp32 (rows x V) tensors alive at the peak of one chunk's forward + backward: the student's logits, their
# gradient and the teacher's logits, plus what each term's autograd graph keeps; measured as the slope of
# peak RSS over chunk rows with `kdistill bench loss`-style runs on CPU (V = 49152), rounded up.
LIVE_TENSORS_BASE = 3
LIVE_TENSORS = {"ce": 3, "forward_kl": 6, "reverse_kl": 6, "tvd": 6, "selective": 6, "bidirectional_kl": 7,
                "skew_forward_kl": 8, "skew_reverse_kl": 8, "jsd": 10, "entropy_temperature": 2}
# a teacher term on a sparse (top-k) signal: no teacher (rows x V) logits, only the student's; measured
# slope of forward_kl(residual) + ce was ~8 with the base and ce, so 2; 3 leaves a margin
LIVE_TENSORS_SPARSE_TERM = 3


def auto_chunk_size(vocab_size: int, memory_budget_mb: float, kinds: list[str], live: int | None = None) -> int:
    """Rows per chunk so that one chunk's (rows x V) fp32 working set fits in the memory budget.

    `kinds`: each term's kind, plus "entropy_temperature" for each term with that temperature; a teacher
    term on a sparse signal is "sparse". `live`: the (rows x V) blocks alive, counted by the caller
    (the closed form's chunks) instead of from `kinds`.
    """
    table = {**LIVE_TENSORS, "sparse": LIVE_TENSORS_SPARSE_TERM}
    if live is None:
        live = LIVE_TENSORS_BASE + sum(table.get(k, max(LIVE_TENSORS.values())) for k in kinds)
    rows = int(memory_budget_mb * 2**20 // (live * vocab_size * 4))
    return max(8, rows // 8 * 8) if rows >= 8 else max(1, rows)


class _FusedLinearLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, chunk_loss, chunk_size):
        needs_hidden, needs_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        matmul_dtype = torch.promote_types(hidden.dtype, weight.dtype)  # bf16 hidden (autocast) + fp32 head
        dtype = torch.promote_types(matmul_dtype, torch.float32)
        w = weight.to(matmul_dtype)
        grad_hidden = torch.zeros_like(hidden) if needs_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if needs_weight else None
        total = torch.zeros((), dtype=dtype, device=hidden.device)
        slices = chunk_slices(hidden.shape[0], chunk_size)
        # one logits buffer for every chunk: a fresh (rows x V) block per chunk costs its page faults
        # each time (glibc maps blocks over 32 MiB anew), about as much as the loss's own passes on CPU
        most = max((len(range(hidden.shape[0])[r]) for r in slices), default=0)
        buffer = torch.empty(most, weight.shape[0], dtype=dtype, device=hidden.device) \
            if matmul_dtype == dtype else None
        for rows in slices:
            h = hidden[rows].to(matmul_dtype)
            if buffer is not None:
                logits = torch.matmul(h, w.T, out=buffer[:h.shape[0]])
            else:
                logits = (h @ w.T).to(dtype)
            logits = logits.requires_grad_(needs_hidden or needs_weight)
            with torch.enable_grad():
                loss = chunk_loss(logits, rows)
            grad_logits = None
            if isinstance(loss, tuple):  # the chunk's loss and its gradient in closed form
                loss, grad_logits = loss
            total += loss.detach()
            if not (needs_hidden or needs_weight):
                continue
            if grad_logits is None:
                (grad_logits,) = torch.autograd.grad(loss, logits)
            if needs_hidden:
                grad_hidden[rows] = grad_logits.to(matmul_dtype) @ w
            if needs_weight:
                grad_weight.addmm_(grad_logits.T, h.to(dtype))
        ctx.grads = (grad_hidden, grad_weight.to(weight.dtype) if needs_weight else None)
        ctx.versions = None
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grads = [g for g in ctx.grads if g is not None]
        if ctx.versions is not None and ctx.versions != [g._version for g in grads]:
            raise RuntimeError("the fused loss's gradients were handed to .grad and changed since (backward "
                               "with retain_graph); compute the loss again instead of a further backward")
        if grad_output.item() != 1.0 or ctx.versions is not None:  # a loss scaler, a second backward
            return *(g * grad_output if g is not None else None for g in ctx.grads), None, None
        # first plain backward(): hand over views, which autograd keeps as .grad without a (V, D) copy
        ctx.versions = [g._version for g in grads]
        return *(g.detach() if g is not None else None for g in ctx.grads), None, None


def chunk_slices(n: int, chunk_size: int | list[slice]) -> list[slice]:
    """Row chunks of n rows: every chunk_size rows, or the given slices (a loss whose rows form groups)."""
    if isinstance(chunk_size, list):
        return chunk_size
    return [slice(start, start + chunk_size) for start in range(0, n, chunk_size)]


def fused_linear_loss(hidden: Tensor, weight: Tensor, chunk_loss: Callable[[Tensor, slice], Tensor],
                      chunk_size: int | list[slice]) -> Tensor:
    """Σ over row chunks of chunk_loss(hidden[rows] @ weight.T in fp32, rows), never all logits at once.

    `chunk_loss` must be a sum over its rows (so chunks add up) and differentiable in its logits, or
    return (loss, d loss / d logits) itself (`closed_form.py`).
    `chunk_size`: rows per chunk, or the chunks themselves as slices covering 0..N in order.
    Shapes: hidden (N, D), weight (V, D) -> ()
    """
    chunks = chunk_size if isinstance(chunk_size, list) else max(1, int(chunk_size))
    return _FusedLinearLoss.apply(hidden, weight, chunk_loss, chunks)
