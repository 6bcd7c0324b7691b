"""What a run was: wall time, tokens seen, data sizes, optimiser settings, hardware, how to reproduce it,
when each number was measured, and whether held-out KL says the data ran out.

Each value comes from the run folder (eval.json, metrics.jsonl, config.yaml, kdistill.log), newest source
first; a value none of them holds is left out rather than guessed.

The data warning: at the last held-out evaluation, held-out KL above `GAP_RATIO` times the training KL
(the mean of the training KL term over the `WINDOW` steps up to it) and at least `GAP_NATS` above it
means the student fits its training examples far better than new text of the same kind: too little data
for the number of steps. The comparison is made only when both are KL(teacher ‖ student) at T=1.
"""
from __future__ import annotations

import datetime
import re
from pathlib import Path

from kdistill.report.runs import kl_key, series

GAP_RATIO, GAP_NATS, WINDOW = 1.5, 0.25, 10
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) ")
LOG_DATA = re.compile(r"data: (\d+) training and (\d+) held-out examples")
LOG_DEVICE = re.compile(r"INFO device (\S+), teacher dtype (\S+), (\d+) threads")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, s = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {s:02d} s" if minutes else f"{s} s"


def log_lines(run: dict) -> list[str]:
    path = Path(run["path"]) / "kdistill.log"
    return path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else []


def _parse_time(text: str) -> float | None:
    for fmt in ("%Y-%m-%d %H:%M:%S",):
        try:
            return datetime.datetime.strptime(text, fmt).timestamp()
        except ValueError:
            pass
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def wall_times(run: dict) -> dict:
    """{"training": seconds from the step-0 row to the last row, "run": first log line to the last
    measurement}, each only where the folder shows it."""
    out = {}
    times = [r["time"] for r in run["metrics"] if isinstance(r.get("time"), (int, float))]
    if len(times) > 1:
        out["training"] = max(times) - min(times)
    starts = [m.group(1) for m in map(LOG_TIME.match, log_lines(run)) if m]
    ends = [m.get("time") for m in ((run["eval"] or {}).get("measured") or {}).values() if isinstance(m, dict)]
    end = max((t for t in map(_parse_time, filter(None, ends)) if t), default=None) or (max(times) if times else None)
    start = _parse_time(starts[0]) if starts else None
    if start and end and end > start:
        out["run"] = end - start
    return out


def data_sizes(run: dict) -> dict:
    sizes = dict((run["eval"] or {}).get("data_sizes") or {})
    if not sizes:
        found = [m for m in map(LOG_DATA.search, log_lines(run)) if m]
        if found:
            sizes = {"train_examples": int(found[-1].group(1)), "heldout_examples": int(found[-1].group(2))}
    return sizes


def hardware_line(run: dict) -> str | None:
    hw = (run["eval"] or {}).get("hardware")
    if hw:
        where = hw.get("gpu") or f"{hw.get('cpu', '?')}, {hw.get('cpu_cores', '?')} cores"
        return (f"{hw.get('device')} ({where}), {hw.get('torch_threads')} torch threads; torch {hw.get('torch')}, "
                f"transformers {hw.get('transformers')}, Python {hw.get('python')}, {hw.get('platform')}")
    found = [m for m in map(LOG_DEVICE.search, log_lines(run)) if m]
    if not found:
        return None
    n = int(found[0].group(3))
    return f"{found[0].group(1)}, {n} thread{'s' if n != 1 else ''} (from kdistill.log)"


def reproduce(run: dict) -> str:
    return f"kdistill distill --config {Path(run['path']) / 'config.yaml'}"


def _train(run: dict) -> dict:
    return (run["config"] or {}).get("train") or {}


def _n(v) -> str:
    return f"{v:,}" if isinstance(v, int) else "-"


def fact_rows(run: dict) -> list[list[str]]:
    """[label, value] rows of the run's facts table."""
    t, rows = _train(run), []
    walls = wall_times(run)
    if walls:
        rows.append(["wall time", " · ".join(f"{k} {duration(v)}" for k, v in walls.items())])
    steps, seen = series(run["metrics"], "tokens_seen")
    if seen:
        rows.append(["tokens seen", f"{seen[-1]:,} in {steps[-1]} steps"])
    sizes = data_sizes(run)
    if sizes:
        held = (run["eval"] or {}).get("heldout") or {}
        rows.append(["examples", f"{_n(sizes.get('train_examples'))} training, {_n(sizes.get('heldout_examples'))} "
                     f"held-out" + (f" ({held['tokens']:,} held-out tokens)" if held.get("tokens") else "")])
    if t:
        rows.append(["optimiser", f"AdamW, lr {t.get('lr', '?')} (warm-up {t.get('warmup_steps', '?')} steps, cosine to "
                     f"{t.get('min_lr_ratio', '?')}x), batch {t.get('batch_size', '?')} x {t.get('grad_accum', 1)} "
                     f"accumulated x {t.get('seq_len', '?')} tokens, grad clip {t.get('grad_clip', '?')}"])
    hw = hardware_line(run)
    if hw:
        rows.append(["hardware", hw])
    rows.append(["reproduce", reproduce(run)])
    return rows


def measured_rows(run: dict) -> list[list[str]]:
    """[what, when, command] of every measurement eval.json records."""
    e = run["eval"] or {}
    rows = [[group, m.get("time", "-"), m.get("command", "-")] for group, m in sorted((e.get("measured") or {}).items())]
    rows += [[f"task {name}", b["measured"].get("time", "-"), b["measured"].get("command", "-")]
             for name, b in (e.get("benchmarks") or {}).items() if isinstance(b.get("measured"), dict)]
    return rows


def _kl_temperature_one(run: dict, key: str) -> bool:
    terms = ((run["config"] or {}).get("loss") or {}).get("terms") or []
    term = next((t for t in terms if isinstance(t, dict) and t.get("kind") == key), None)
    return key == "forward_kl" and (term is None or float(term.get("temperature", 1.0)) == 1.0)


def data_warning(run: dict) -> str | None:
    """The too-little-data warning (module docstring), or None."""
    rows, key = run["metrics"], kl_key(run["metrics"])
    held_steps, held = series(rows, "eval_kl")
    if not key or not held_steps or held_steps[-1] == 0 or not _kl_temperature_one(run, key):
        return None
    steps, train = series(rows, key)
    recent = [v for s, v in zip(steps, train) if held_steps[-1] - WINDOW < s <= held_steps[-1]]
    if not recent:
        return None
    train_kl, held_kl = sum(recent) / len(recent), held[-1]
    if held_kl < GAP_RATIO * train_kl or held_kl - train_kl < GAP_NATS:
        return None
    t, n = _train(run), data_sizes(run).get("train_examples")
    seen = ""
    if n and t.get("batch_size"):
        epochs = held_steps[-1] * t["batch_size"] * t.get("grad_accum", 1) / n
        seen = f" (each of its {n:,} training examples seen about {epochs:.1f} times in {held_steps[-1]} steps)"
    return (f"Held-out KL {held_kl:.2f} is {held_kl / max(train_kl, 1e-9):.1f}x the training KL {train_kl:.2f} at step "
            f"{held_steps[-1]}: the student fits its training data{seen} far better than new text, so there is too "
            "little data for the steps. Give more data (a larger data.generate.num_samples, or more data.path "
            "records) or train fewer steps (train.max_steps).")
