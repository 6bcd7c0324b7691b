"""The report's content, as blocks for `page.py`: overview, quality vs size, training, then one section a run."""
from __future__ import annotations

import datetime

from . import plots, tradeoff
from .gradient_flow import gradient_flow_png
from .runs import series


def num(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:,.{digits}f}" if abs(v) < 1000 else f"{v:,.0f}"


def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def times(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


def kl_start(run: dict):
    e = run["eval"] or {}
    if (e.get("heldout_start") or {}).get("kl") is not None:  # against the teacher (not a cache)
        return e["heldout_start"]["kl"]
    steps, values = series(run["metrics"], "eval_kl")
    return values[0] if steps and steps[0] == 0 else None


def overview(runs: list[dict], pts: list[dict], source: str) -> list:
    retention = {p["name"]: p["retention"] for p in pts}
    rows = []
    for r in runs:
        e = r["eval"] or {}
        h, s = e.get("heldout") or {}, e.get("student") or {}
        steps, _ = series(r["metrics"], "loss")
        rows.append([r["name"], steps[-1] if steps else "-", num(s.get("parameters")), times(e.get("compression")),
                     f"{num(kl_start(r))} → {num(h.get('kl'))}", pct(h.get("top1_agreement")),
                     pct(h.get("top10_agreement")), f"{num(h.get('ppl_student'), 2)} / {num(h.get('ppl_teacher'), 2)}",
                     times(e.get("speedup")), pct(retention.get(r["name"]))])
    header = ["run", "steps", "student parameters", "compression", "held-out KL start → end", "top-1",
              "top-10", "perplexity student / teacher", "speed-up", "retention"]
    return [("h2", "Overview"), ("table", header, rows, ""),
            ("p", f"Retention is the {tradeoff.SOURCES[source]}. KL is KL(teacher ‖ student) at T=1 in nats per "
                  "held-out token; agreement is the share of tokens whose top-1 (top-10) predictions match.")]


def tradeoff_section(runs: list[dict], min_retention: float) -> list:
    pts, source = tradeoff.points(runs)
    front = tradeoff.pareto(pts)
    advice = tradeoff.recommend(pts, min_retention)
    blocks = [("h2", "Quality vs size"), ("note", advice["text"])]
    png = plots.tradeoff_png(pts, front, min_retention, tradeoff.SOURCES[source], [r["name"] for r in runs])
    if png:
        blocks.append(("figure", "tradeoff.png", png, f"Retention ({tradeoff.SOURCES[source]}) against "
                       "compression; grey: the Pareto frontier, red: the retention bar."))
    if len(pts) > 1:
        blocks.append(("p", "Pareto-optimal runs (no other run is both smaller and better): " + ", ".join(front)))
    return blocks


def training_section(runs: list[dict]) -> list:
    blocks = [("h2", "Training")]
    figures = [("loss_kl.png", plots.curves_png(runs), "Training loss and its terms (left); the training KL "
                "term and the held-out KL points (right). Long runs show a moving average over the faint raw curve."),
               ("heldout.png", plots.heldout_png(runs), "Held-out top-1 agreement with the teacher and "
                "perplexity over training (dotted: the teacher's perplexity)."),
               ("kl_position.png", plots.position_png(runs), "Mean held-out KL at each position after training.")]
    figures += [(f"gradient_flow_{r['name']}.png", gradient_flow_png(r), "Gradient flow by layer "
                 f"(train.debug_every): log10 gradient norm and log10 update-to-weight ratio per layer group "
                 f"of {r['name']}; a band far below or above the others is a vanishing or exploding layer.")
                for r in runs]
    blocks += [("figure", name, png, caption) for name, png, caption in figures if png]
    if len(blocks) == 1:
        blocks.append(("p", "No training metrics were logged yet."))
    return blocks


def config_line(cfg: dict) -> str:
    student = cfg.get("student") or {}
    terms = ((cfg.get("loss") or {}).get("terms")) or []
    loss = " + ".join(f"{t.get('weight', 1)}·{t.get('kind', '?')}" for t in terms if isinstance(t, dict))
    sizes = ", ".join(f"{k}={student[k]}" for k in ("preset", "num_layers", "hidden_size") if student.get(k))
    return (f"teacher {(cfg.get('teacher') or {}).get('model', '?')}; student {student.get('kind', '?')} ({sizes}); "
            f"{(cfg.get('train') or {}).get('max_steps', '?')} steps; loss {loss or '?'}")


EFFICIENCY = [("parameters", "parameters", "compression", "fewer"),
              ("size on disk (MB)", "size_on_disk_mb", "size_ratio", "smaller"),
              ("generation tokens/s", "tokens_per_s", "speedup", "faster"),
              ("time to first token (ms)", "ttft_ms", "ttft_speedup", "faster"),
              ("peak memory (MB RSS)", "peak_rss_mb", None, ""),
              ("model memory (MB RSS)", "model_rss_mb", "memory_ratio", "less"),
              ("peak GPU memory (MB)", "peak_gpu_mb", None, "")]


OPPOSITE = {"fewer": "more", "smaller": "larger", "faster": "slower", "less": "more"}


def versus(ratio: float | None, word: str) -> str:
    """'2.00x faster' for 2.0, '1.25x slower' for 0.8 (a ratio below 1 reads the other way round)."""
    if ratio is None or ratio <= 0:
        return ""
    return f"{ratio:.2f}x {word}" if ratio >= 1 else f"{1 / ratio:.2f}x {OPPOSITE[word]}"


def comparison_table(e: dict) -> list:
    t, s, h = e.get("teacher") or {}, e.get("student") or {}, e.get("heldout") or {}
    rows = [["held-out perplexity", num(h.get("ppl_teacher"), 2), num(h.get("ppl_student"), 2), ""]]
    for label, key, ratio, word in EFFICIENCY:
        if key in t or key in s:
            rows.append([label, num(t.get(key)), num(s.get(key)),
                         versus(e.get(ratio), word) if ratio else ""])
    return [("table", ["", "teacher", "student", "student vs teacher"], rows, "")]


def agreement_table(h: dict) -> list:
    q = h.get("kl_quantiles") or {}
    rows = [["KL(teacher ‖ student), nats/token", num(h.get("kl"), 4)],
            ["Jensen-Shannon, nats/token", num(h.get("js"), 4)],
            ["top-1 agreement", pct(h.get("top1_agreement"))], ["top-10 agreement", pct(h.get("top10_agreement"))]]
    rows += [[f"per-token KL {k}", num(v, 4)] for k, v in q.items()]
    rows.append(["held-out tokens", num(h.get("tokens"))])
    return [("table", ["held-out agreement", "value"], rows, "")]


def benchmark_table(bench: dict) -> list:
    rows = []
    for name, b in bench.items():
        metrics = ["acc", "acc_norm"] if b["kind"] == "multiple_choice" else ["exact_match"]
        for m in metrics:
            t, s = b["teacher"].get(m), b["student"].get(m)
            ret = b.get("retention") if m == b["metric"] else (s / t if t else None)
            rows.append([name, b["kind"].replace("_", " "), m, b["n"], pct(t), pct(s), pct(ret)])
    return [("table", ["task", "kind", "metric", "n", "teacher", "student", "retention"], rows, "")]


def run_section(run: dict) -> list:
    blocks = [("h2", f"Run {run['name']}"), ("p", f"{run['path']}: {config_line(run['config'])}")]
    e = run["eval"]
    if not e:
        return blocks + [("p", "No eval.json yet (the run has not finished); only its curves are shown above.")]
    blocks += [("h3", "Teacher vs student")] + comparison_table(e) + agreement_table(e.get("heldout") or {})
    if e.get("benchmarks"):
        blocks += [("h3", "Benchmarks")] + benchmark_table(e["benchmarks"])
    completions = e.get("completions") or {}
    prompts = e.get("prompts") or []
    if prompts and completions.get("teacher") and completions.get("student"):
        rows = [[p, t, s] for p, t, s in zip(prompts, completions["teacher"], completions["student"])]
        blocks += [("h3", "Seed prompts, side by side"), ("table", ["prompt", "teacher", "student"], rows, "text")]
    return blocks


def build_blocks(runs: list[dict], title: str, min_retention: float) -> list:
    pts, source = tradeoff.points(runs)
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    blocks = [("h1", title), ("p", f"{len(runs)} run{'s' if len(runs) > 1 else ''}: "
                                    f"{', '.join(r['name'] for r in runs)} — generated {when}")]
    blocks += overview(runs, pts, source) + tradeoff_section(runs, min_retention) + training_section(runs)
    for r in runs:
        blocks += run_section(r)
    return blocks
