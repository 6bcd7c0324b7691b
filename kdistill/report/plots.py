"""The report's figures, drawn with matplotlib's object API (no pyplot state) and returned as PNG bytes.

Each function takes the loaded runs (`runs.load_run`) and returns None when there is nothing to draw.
One colour per run throughout the page.
"""
from __future__ import annotations

import io

from kdistill.base.errors import KdistillError
from kdistill.report.runs import heldout_kl_keys, kl_key, series, term_keys

DPI = 100


def _figure(width: float, height: float, panels: int = 1):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise KdistillError("kdistill report draws with matplotlib: pip install matplotlib "
                            "(or pip install 'kdistill[report]')") from None
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, panels, i + 1) for i in range(panels)]


def _png(fig) -> bytes:
    """Every panel gridded and with its legend, rendered to PNG bytes."""
    for ax in fig.axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def color(i: int) -> str:
    return f"C{i % 10}"


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average with bias correction, so the first points are not pulled to 0."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** i))
    return out


def _line(ax, steps, values, c, label, style="-"):
    if len(values) > 50:  # noisy: faint raw curve under its moving average
        ax.plot(steps, values, style, color=c, alpha=0.25, linewidth=0.8)
        values = smooth(values)
    ax.plot(steps, values, style, color=c, label=label, linewidth=1.5)


def log_if_decades(ax, values: list[float], axis: str = "y") -> None:
    """A log axis when the positive values span more than a factor of 10 (perplexity from step 0 on)."""
    positive = [v for v in values if isinstance(v, (int, float)) and v > 0]
    if positive and max(positive) / min(positive) > 10 and len(positive) == len([v for v in values if v is not None]):
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def _plotted(ax) -> list[float]:
    return [float(v) for line in ax.get_lines() for v in line.get_ydata()]


def curves_png(runs: list[dict]) -> bytes | None:
    """Training loss and its terms (left); training KL term with the held-out KL points (right)."""
    if not any(series(r["metrics"], "loss")[0] for r in runs):
        return None
    fig, (loss_ax, kl_ax) = _figure(11, 4, panels=2)
    styles = ["--", ":", "-."]
    for i, r in enumerate(runs):
        rows, c, prefix = r["metrics"], color(i), f"{r['name']}: " if len(runs) > 1 else ""
        _line(loss_ax, *series(rows, "loss"), c, f"{prefix}loss")
        for j, term in enumerate(term_keys(rows)):
            _line(loss_ax, *series(rows, term), c, f"{prefix}{term}", styles[j % len(styles)])
        key = kl_key(rows)
        if key:
            _line(kl_ax, *series(rows, key), c, f"{prefix}train {key}")
        for (held, against), marker in zip(heldout_kl_keys(rows), "osD^"):
            kl_ax.plot(*series(rows, held), marker, color=c, markersize=5, markeredgecolor="black",
                       label=f"{prefix}held-out KL to the {against}")
    loss_ax.set(title="training loss and its terms", xlabel="step", ylabel="per token")
    kl_ax.set(title="KL(teacher ‖ student): training and held-out", xlabel="step", ylabel="nats per token")
    for ax in (loss_ax, kl_ax):
        log_if_decades(ax, _plotted(ax))
    return _png(fig)


def heldout_png(runs: list[dict]) -> bytes | None:
    """Held-out top-1 agreement (left) and perplexity with the teacher's as a line (right) over training."""
    if not any(series(r["metrics"], "eval_top1")[0] for r in runs):
        return None
    fig, (agree_ax, ppl_ax) = _figure(11, 3.6, panels=2)
    for i, r in enumerate(runs):
        rows, c, label = r["metrics"], color(i), r["name"]
        agree_ax.plot(*series(rows, "eval_top1"), "o-", color=c, label=f"{label} top-1", markersize=4)
        if series(rows, "eval_top10")[0]:
            agree_ax.plot(*series(rows, "eval_top10"), "s--", color=c, label=f"{label} top-10 overlap", markersize=4)
        ppl_ax.plot(*series(rows, "eval_ppl"), "o-", color=c, label=f"{label} student", markersize=4)
        teacher_ppl = ((r["eval"] or {}).get("heldout") or {}).get("ppl_teacher")
        if teacher_ppl:
            ppl_ax.axhline(teacher_ppl, color=c, linestyle=":", label=f"{label} teacher")
    agree_ax.set(title="held-out agreement with the teacher", xlabel="step", ylabel="share", ylim=(0, 1.02))
    ppl_ax.set(title="held-out perplexity", xlabel="step", ylabel="perplexity")
    log_if_decades(ppl_ax, _plotted(ppl_ax))
    return _png(fig)


def optimiser_png(runs: list[dict]) -> bytes | None:
    """Learning rate (left) and gradient norm before clipping, with the clip threshold (right)."""
    if not any(series(r["metrics"], "lr")[0] or series(r["metrics"], "grad_norm")[0] for r in runs):
        return None
    fig, (lr_ax, norm_ax) = _figure(11, 3.4, panels=2)
    for i, r in enumerate(runs):
        c, prefix = color(i), f"{r['name']}: " if len(runs) > 1 else ""
        if series(r["metrics"], "lr")[0]:
            lr_ax.plot(*series(r["metrics"], "lr"), color=c, label=f"{prefix}lr", linewidth=1.5)
        if series(r["metrics"], "grad_norm")[0]:
            _line(norm_ax, *series(r["metrics"], "grad_norm"), c, f"{prefix}gradient norm")
        clip = ((r["config"] or {}).get("train") or {}).get("grad_clip")
        if isinstance(clip, (int, float)) and clip > 0:
            norm_ax.axhline(clip, color=c, linestyle=":", label=f"{prefix}clip at {clip:g}")
    lr_ax.set(title="learning rate", xlabel="step", ylabel="lr")
    norm_ax.set(title="gradient norm (before clipping)", xlabel="step", ylabel="L2 norm")
    log_if_decades(norm_ax, _plotted(norm_ax))
    return _png(fig)


def position_png(runs: list[dict]) -> bytes | None:
    """Mean held-out KL at each position of the sequence, after training."""
    found = [(i, r, r["eval"]["heldout"]["kl_by_position"]) for i, r in enumerate(runs)
             if r["eval"] and (r["eval"].get("heldout") or {}).get("kl_by_position")]
    if not found:
        return None
    fig, (ax,) = _figure(11, 3.2)
    for i, r, values in found:
        ax.plot(range(len(values)), values, color=color(i), label=r["name"], linewidth=1.2)
    ax.set(title="held-out KL(teacher ‖ student) by position", xlabel="position in sequence",
           ylabel="nats per token")
    return _png(fig)


def tradeoff_png(pts: list[dict], front: list[str], min_retention: float, source_label: str,
                 names: list[str]) -> bytes | None:
    """Retention against compression, one point per run, the Pareto frontier and the retention bar."""
    if not pts:
        return None
    fig, (ax,) = _figure(7.5, 4.5)
    for p in pts:
        c = color(names.index(p["name"])) if p["name"] in names else "C0"
        ax.scatter(p["compression"], p["retention"], s=60, color=c, edgecolor="black", zorder=3)
        ax.annotate(p["name"], (p["compression"], p["retention"]), textcoords="offset points", xytext=(6, 6),
                    fontsize=8)
    frontier = sorted((p for p in pts if p["name"] in front), key=lambda p: p["compression"])
    if len(frontier) > 1:
        ax.plot([p["compression"] for p in frontier], [p["retention"] for p in frontier], "-", color="grey",
                label="Pareto frontier", zorder=2)
    ax.axhline(min_retention, color="red", linestyle="--", label=f"bar {min_retention:.0%}")
    xs = [p["compression"] for p in pts]
    if max(xs) / max(1e-9, min(xs)) > 8:
        ax.set_xscale("log")
    ax.set(title="quality vs size", xlabel="compression (teacher / student parameters)",
           ylabel=source_label.split(' (')[0])
    return _png(fig)
