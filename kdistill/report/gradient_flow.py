"""Gradient flow by layer over training: the `train.debug_every` rows of metrics.jsonl as two heat maps
per run (log10 gradient norm and log10 update-to-weight ratio, layer against step), so a layer whose
gradient vanishes or explodes shows as a band of its own."""
from __future__ import annotations

import math

from kdistill.report.plots import _figure

PREFIXES = ("grad_norm/", "update_ratio/")


def _group_order(name: str) -> tuple:
    return (0, int(name.split("_")[1])) if name.startswith("layer_") and name[6:].isdigit() else (1, 0)


def flow(rows: list[dict], prefix: str) -> tuple[list[int], list[str], list[list[float]]]:
    """(steps, groups, values[group][step]) of the debug rows; log10 of each value, NaN where it is 0 or
    missing. Shapes: rows of metrics.jsonl -> L groups x S debug steps."""
    debug_rows = [r for r in rows if any(k.startswith(prefix) for k in r)]
    groups = sorted({k[len(prefix):] for r in debug_rows for k in r if k.startswith(prefix)}, key=_group_order)
    values = [[math.log10(v) if isinstance(v := r.get(prefix + g), (int, float)) and v > 0 else math.nan
               for r in debug_rows] for g in groups]
    return [r.get("step", 0) for r in debug_rows], groups, values


def gradient_flow_png(run: dict) -> bytes | None:
    """Two heat maps for one run, or None when it logged no debug rows (train.debug_every=0)."""
    flows = [flow(run["metrics"], prefix) for prefix in PREFIXES]
    steps, groups, _ = flows[0]
    if not steps:
        return None
    import io

    fig, axes = _figure(11, 0.9 + 0.28 * len(groups), panels=2)
    for ax, (_, names, values), title in zip(axes, flows, ("log10 gradient norm", "log10 update / weight norm")):
        image = ax.imshow(values, aspect="auto", interpolation="nearest", cmap="viridis",
                          extent=(min(steps) - 0.5, max(steps) + 0.5, len(names) - 0.5, -0.5))
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set(title=f"{run['name']}: {title}", xlabel="step")
        fig.colorbar(image, ax=ax)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
