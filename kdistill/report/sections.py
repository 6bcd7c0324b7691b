"""The report's content, as blocks for `page.py`: overview, quality vs size, training, then one section a run."""
from __future__ import annotations

import datetime

from kdistill.evaluation.chance import task_retention
from kdistill.evaluation.completions import describe
from kdistill.report import facts, plots, tradeoff
from kdistill.report.gradient_flow import gradient_flow_png
from kdistill.report.runs import series


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
    rows = []
    for r in runs:
        e = r["eval"] or {}
        h, s = e.get("heldout") or {}, e.get("student") or {}
        steps, _ = series(r["metrics"], "loss")
        rows.append([r["name"], steps[-1] if steps else "-", num(s.get("parameters")), times(e.get("compression")),
                     f"{num(kl_start(r))} → {num(h.get('kl'))}", pct(h.get("top1_agreement")),
                     pct(h.get("top10_agreement")), f"{num(h.get('ppl_student'), 2)} / {num(h.get('ppl_teacher'), 2)}",
                     pct(tradeoff.perplexity_ratio(e)), pct(tradeoff.task_retention(e)), times(speedup(e))])
    header = ["run", "steps", "student parameters", "compression", "held-out KL start → end", "top-1",
              "top-10 overlap", "perplexity student / teacher", "perplexity ratio", "task retention", "speed-up"]
    return [("h2", "Overview"), ("table", header, rows, ""), ("p", METRICS_NOTE)]


METRICS_NOTE = ("KL is KL(teacher ‖ student) at T=1 in nats per held-out token. Top-1: the share of held-out tokens "
                "where student and teacher rank the same next token first. Top-10 overlap: the mean share of the "
                "student's 10 most likely next tokens that are among the teacher's 10. Perplexity ratio: teacher "
                "perplexity / student perplexity on the held-out text (100% = the student predicts it as well as "
                "the teacher). Task retention: the mean of student score / teacher score over the tasks where the "
                "teacher beats the baseline (chance or majority class) by 2 standard errors; '-' without tasks.")


def speedup(e: dict) -> float | None:
    """Generation speed-up, only when both speeds it comes from are in eval.json."""
    t, s = e.get("teacher") or {}, e.get("student") or {}
    return e.get("speedup") if "tokens_per_s" in t and "tokens_per_s" in s else None


def tradeoff_section(runs: list[dict], min_retention: float) -> list:
    pts, source = tradeoff.points(runs)
    front = tradeoff.pareto(pts)
    advice = tradeoff.recommend(pts, min_retention, source)
    blocks = [("h2", "Quality vs size"), ("note", advice["text"])]
    png = plots.tradeoff_png(pts, front, min_retention, tradeoff.SOURCES[source], [r["name"] for r in runs])
    if png:
        blocks.append(("figure", "tradeoff.png", png, f"{tradeoff.SOURCES[source][0].upper()}"
                       f"{tradeoff.SOURCES[source][1:]} against compression; grey: the Pareto frontier, red: the bar."))
    if len(pts) > 1:
        blocks.append(("p", "Pareto-optimal runs (no other run is both smaller and better): " + ", ".join(front)))
    return blocks


def training_section(runs: list[dict]) -> list:
    blocks = [("h2", "Training")]
    blocks += [("note", f"{r['name']}: {w}" if len(runs) > 1 else w) for r in runs if (w := facts.data_warning(r))]
    figures = [("loss_kl.png", plots.curves_png(runs), "Training loss and its terms (left); the training KL "
                "term and the held-out KL points (right). Long runs show a moving average over the faint raw curve; "
                "an axis whose values span more than 10x is logarithmic."),
               ("heldout.png", plots.heldout_png(runs), "Held-out agreement over training (left): top-1, the share "
                "of tokens where student and teacher rank the same next token first, and top-10 overlap, the mean "
                "share of the student's 10 most likely tokens among the teacher's 10. Held-out perplexity of the "
                "student (right; dotted: the teacher's), on a log axis when it spans more than 10x."),
               ("optimiser.png", plots.optimiser_png(runs), "Learning rate (left) and gradient norm before "
                "clipping (right; dotted: the clip threshold)."),
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
            f"{_length(cfg.get('train') or {})}; loss {loss or '?'}")


def _length(train: dict) -> str:
    """How long the run trained, as configured: its steps, or its epochs when max_steps was left empty."""
    if train.get("max_steps") is None and train.get("epochs"):
        return f"{train['epochs']} epochs"
    if train.get("max_steps") is None and train.get("time_budget"):
        return f"a {train['time_budget']:g}-minute time budget"
    return f"{train.get('max_steps', '?')} steps"


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
    """Teacher and student side by side; a ratio only where both numbers it comes from are there."""
    t, s, h = e.get("teacher") or {}, e.get("student") or {}, e.get("heldout") or {}
    rows = [["held-out perplexity", num(h.get("ppl_teacher"), 2), num(h.get("ppl_student"), 2), ""]] if h else []
    for label, key, ratio, word in EFFICIENCY:
        if key in t or key in s:
            rows.append([label, num(t.get(key)), num(s.get(key)),
                         versus(e.get(ratio), word) if ratio and key in t and key in s else ""])
    if "error" in t or "error" in s:
        rows.append(["speed measurement", "failed", t.get("error") or s.get("error"), ""])
    return [("table", ["", "teacher", "student", "student vs teacher"], rows, "")]


def agreement_table(h: dict) -> list:
    q = h.get("kl_quantiles") or {}
    rows = [["KL(teacher ‖ student), nats/token", num(h.get("kl"), 4)],
            ["Jensen-Shannon, nats/token", num(h.get("js"), 4)],
            ["top-1 agreement (same most likely token)", pct(h.get("top1_agreement"))],
            ["top-10 overlap (student's top 10 among the teacher's)", pct(h.get("top10_agreement"))]]
    rows += [[f"per-token KL {k}", num(v, 4)] for k, v in q.items()]
    rows.append(["held-out tokens", num(h.get("tokens"))])
    return [("table", ["held-out agreement", "value"], rows, "")]


def score(scores: dict, metric: str) -> str:
    """'62.5% ± 8.1' (a score and its standard error in points)."""
    se = scores.get(f"{metric}_stderr")
    return pct(scores.get(metric)) + ("" if se is None else f" ± {100 * se:.1f}")


def benchmark_table(bench: dict) -> list:
    """Each task's scores with standard errors, its baseline, and task retention (n/a at the baseline)."""
    rows = []
    for name, b in bench.items():
        metrics = ["acc", "acc_norm"] if b["kind"] == "multiple_choice" else ["exact_match"]
        for m in metrics:
            t, s = b["teacher"].get(m), b["student"].get(m)
            if m == b["metric"] or b.get("baseline") is None:
                ret = b.get("retention") if m == b["metric"] else (s / t if t else None)
            else:
                ret = task_retention(s, t, b["baseline"], b["n"])[0]
            base = (f"{pct(b['baseline'])} (chance {pct(b.get('chance'))}, majority {pct(b.get('majority'))})"
                    if b.get("baseline") is not None else "-")
            rows.append([name, b["kind"].replace("_", " "), m, b["n"], score(b["teacher"], m), score(b["student"], m),
                         base, pct(ret) if ret is not None else "n/a" if b.get("baseline") is not None else "-"])
    notes = [f"{name}: {b['retention_note']}" for name, b in bench.items() if b.get("retention_note")]
    return [("table", ["task", "kind", "metric", "n", "teacher", "student", "baseline", "task retention"], rows, ""),
            ("p", "Scores ± one standard error. Task retention = student / teacher score, n/a where the teacher "
                  "does not beat the baseline by 2 standard errors of a scorer at that baseline"
                  + (" — " + "; ".join(notes) if notes else "") + ".")]


def completions_block(e: dict) -> list:
    completions, prompts = e.get("completions") or {}, e.get("prompts") or []
    if not (prompts and completions.get("teacher") and completions.get("student")):
        return []
    rows = [[p, t, s] for p, t, s in zip(prompts, completions["teacher"], completions["student"])]
    how = describe(e["completion_settings"]) if e.get("completion_settings") else (
        "made by an older kdistill with a repetition penalty of 1.2 that the student's generation_config.json "
        "does not carry; rerun `kdistill eval --run` to redo them with the saved settings")
    return [("h3", "Seed prompts, side by side"), ("p", f"Completions: {how}."),
            ("table", ["prompt", "teacher", "student"], rows, "text")]


def run_section(run: dict) -> list:
    blocks = [("h2", f"Run {run['name']}"), ("p", f"{run['path']}: {config_line(run['config'])}"),
              ("table", ["run", ""], facts.fact_rows(run), "")]
    e = run["eval"]
    if not e:
        return blocks + [("p", "No eval.json yet (the run has not finished); only its curves are shown above.")]
    blocks += [("h3", "Teacher vs student")] + comparison_table(e)
    if e.get("heldout"):
        blocks += agreement_table(e["heldout"])
    if e.get("benchmarks"):
        blocks += [("h3", "Benchmarks")] + benchmark_table(e["benchmarks"])
    blocks += completions_block(e)
    measured = facts.measured_rows(run)
    if measured:
        blocks += [("h3", "When each number was measured"), ("table", ["measurement", "time (UTC)", "command"],
                                                               measured, "")]
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
