"""The guide's training debugger: per-layer gradient norms and update-to-weight ratios every
`train.debug_every` steps, vanishing or exploding layers named in the log, and the first parameter whose
gradient is not finite.

    before = snapshot(student)                   # on a debug step, before optimizer.step()
    grads = layer_grad_norms(student)
    optimizer.step()
    row.update(layer_report(student, grads, before))
"""
from __future__ import annotations

import logging
import math

import torch

from kdistill.models.heads import decoder_layers

log = logging.getLogger("kdistill")
VANISHING, EXPLODING = 1e-3, 1e2  # a layer's gradient norm relative to the median layer's


def first_non_finite(model) -> str | None:
    """The name of the first parameter whose gradient holds a NaN or an infinity, else None."""
    for name, p in model.named_parameters():
        if p.grad is not None and not torch.isfinite(_local(p.grad)).all():  # this process's shard under fsdp
            return name
    return None


def _groups(model) -> dict[str, list]:
    layers = decoder_layers(model) or []
    groups = {f"layer_{i}": [p for p in layer.parameters() if p.requires_grad] for i, layer in enumerate(layers)}
    inside = {id(p) for ps in groups.values() for p in ps}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in inside]
    if rest:
        groups["other"] = rest  # embeddings, final norm, head (tied), adapters outside the blocks
    return {k: v for k, v in groups.items() if v}


def _local(t):
    return t.to_local() if hasattr(t, "to_local") else t  # this process's shard of an FSDP2 DTensor


def _squares(tensors) -> float:
    return sum(float(_local(t).detach().float().pow(2).sum()) for t in tensors)


def _norms(squares: dict[str, float], dist=None) -> dict[str, float]:
    """Square roots of per-group sums of squares, summed over the processes' shards first (fsdp)."""
    squares = dist.sum_dict(squares) if dist is not None else squares
    return {k: math.sqrt(max(v, 0.0)) for k, v in squares.items()}


def snapshot(model) -> dict[str, list]:
    return {k: [_local(p).detach().clone() for p in ps] for k, ps in _groups(model).items()}


def layer_grad_norms(model, dist=None) -> dict[str, float]:
    """Per-group gradient norms; `dist` (an fsdp run's) sums the shards of every process (collective)."""
    return _norms({k: _squares([p.grad for p in ps if p.grad is not None]) for k, ps in _groups(model).items()}, dist)


def layer_report(model, grads: dict[str, float], before: dict[str, list], dist=None,
                 warn: bool = True) -> dict[str, float]:
    """`grad_norm/<group>` and `update_ratio/<group>` (‖Δw‖ / ‖w‖ of the step just taken); logs (`warn`)
    the groups whose gradient norm is far below or above the median group's. `dist`: as layer_grad_norms."""
    groups = _groups(model)
    deltas = _norms({k: _squares([_local(p).detach() - b for p, b in zip(ps, before[k])])
                     for k, ps in groups.items()}, dist)
    sizes = _norms({k: _squares(before[k]) for k in groups}, dist)
    row = {}
    for k in groups:
        row[f"grad_norm/{k}"] = grads[k]
        row[f"update_ratio/{k}"] = deltas[k] / max(sizes[k], 1e-12)
    if not warn:
        return row
    layer_norms = sorted(v for k, v in grads.items() if k.startswith("layer_"))
    if layer_norms:
        median = layer_norms[len(layer_norms) // 2]
        low = [k for k, v in grads.items() if k.startswith("layer_") and v < VANISHING * median]
        high = [k for k, v in grads.items() if k.startswith("layer_") and v > EXPLODING * median]
        if low:
            log.warning("vanishing gradients in %s (below %.0e x the median layer's norm %.3g)", ", ".join(low),
                        VANISHING, median)
        if high:
            log.warning("exploding gradients in %s (above %.0e x the median layer's norm %.3g)", ", ".join(high),
                        EXPLODING, median)
    return row
