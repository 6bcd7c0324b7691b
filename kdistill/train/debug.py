"""The guide's training debugger: per-layer gradient norms and update-to-weight ratios every
`train.debug_every` steps, vanishing or exploding layers named in the log, the first parameter whose
gradient is not finite, and what in a step is NaN or infinite (teacher signal, weights, any tensors).

    before = snapshot(student)                   # on a debug step, before optimizer.step()
    grads = layer_grad_norms(student)
    optimizer.step()
    row.update(layer_report(student, grads, before))
"""
from __future__ import annotations

import dataclasses
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


def all_finite(tensors) -> bool:
    """Whether every value of the floating-point `tensors` (this process's shards) is finite; one device
    sync per device, however many tensors."""
    flags: dict = {}
    for t in tensors:
        t = _local(t).detach()
        if t.is_floating_point():
            flags.setdefault(t.device, []).append(torch.isfinite(t).all())
    return all(bool(torch.stack(f).all()) for f in flags.values())


def non_finite(named, allow_neg_inf: bool = False) -> str | None:
    """The first of the (name, tensor) pairs `named` holding a NaN or an infinity (-inf allowed with
    `allow_neg_inf`), as "name (3 NaN and 0 infinite of 4,096 values)"; None when every value is finite."""
    for name, t in named:
        t = _local(t).detach() if torch.is_tensor(t) else None
        if t is None or not t.is_floating_point():
            continue
        nan, inf = int(torch.isnan(t).sum()), int((torch.isposinf(t) if allow_neg_inf else torch.isinf(t)).sum())
        if nan or inf:
            return f"{name} ({nan:,} NaN and {inf:,} {'+inf' if allow_neg_inf else 'infinite'} of {t.numel():,} values)"
    return None


def _named_tensors(obj, name: str):
    """(name, tensor) for every tensor in a signal: dataclass fields, lists, tuples and dicts, walked."""
    if torch.is_tensor(obj):
        yield name, obj
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _named_tensors(getattr(obj, f.name), f"{name}.{f.name}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _named_tensors(v, f"{name}[{i}]")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _named_tensors(v, f"{name}[{k!r}]")


def non_finite_teacher(signal, activations: dict | None = None) -> str | None:
    """What in the teacher's signal (or its activations for feature terms) is NaN or +inf, else None.
    -inf is a value a teacher may give: an id outside its support (padded vocabularies)."""
    named = [*_named_tensors(signal, type(signal).__name__), *_named_tensors(activations or {}, "activations")]
    return non_finite(named, allow_neg_inf=True)


def first_non_finite_weight(model) -> str | None:
    """The name of the first parameter holding a NaN or an infinity (this process's shard), else None."""
    for name, p in model.named_parameters():
        if not torch.isfinite(_local(p).detach()).all():
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
