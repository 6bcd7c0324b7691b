"""Read `kdistill distill` output folders: config.yaml, metrics.jsonl and eval.json.

A run that is still training (or was killed) has no eval.json yet; its curves are still reported. A
last metrics line cut short by a kill is skipped; a broken line elsewhere is an error naming the line.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml

from kdistill.base import fsutil
from kdistill.base.errors import DataError

log = logging.getLogger("kdistill")

# metrics.jsonl keys that are not loss terms
META = {"step", "loss", "tokens", "lr", "grad_norm", "tokens_per_s", "tokens_seen", "time", "rollout_tokens",
        "rollout_staleness"}
METRICS_FIX = "each line is one step's row as kdistill wrote it: fix or delete that line"


def _step_problem(row: dict) -> str | None:
    step = row.get("step", 0)
    if isinstance(step, bool) or not isinstance(step, int):
        return f"'step' is {step!r}, not a whole number"
    return None


def read_metrics(path: Path, say=log.warning) -> list[dict]:
    """The rows of a run's metrics.jsonl by step, through `fsutil.read_jsonl` (every reader of metrics.jsonl
    comes here): a last line cut short by a kill is dropped and `say` tells it; a broken line elsewhere is a
    DataError naming the file and line."""
    rows, cut = fsutil.read_jsonl(path, METRICS_FIX, _step_problem)
    if cut is not None:
        say(f"{path}, line {cut}: cut short (the run was stopped while writing it); dropped")
    return sorted(rows, key=lambda r: r.get("step", 0))


def read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); rerun "
                        f"`kdistill eval --run {path.parent}` to rewrite it") from None


def load_run(path: str | Path) -> dict:
    """{"name", "path", "config" (plain dict), "metrics" (rows by step), "eval" (dict or None)}."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: no such folder; give the output_dir of `kdistill distill`")
    metrics, result = read_metrics(path / "metrics.jsonl"), read_json(path / "eval.json")
    if not metrics and result is None:
        raise DataError(f"{path}: neither metrics.jsonl nor eval.json is there; give the output_dir of "
                        "`kdistill distill` (or run `kdistill eval --run` on it)")
    config = {}
    if (path / "config.yaml").is_file():
        config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    return {"name": path.resolve().name, "path": str(path), "config": config, "metrics": metrics, "eval": result}


def load_runs(paths: list) -> list[dict]:
    """Every run; names made unique with their parent folder where two runs share a name."""
    runs = [load_run(p) for p in paths]
    names = [r["name"] for r in runs]
    for r in runs:
        if names.count(r["name"]) > 1:
            r["name"] = f"{Path(r['path']).resolve().parent.name}/{r['name']}"
    return runs


def term_keys(rows: list[dict]) -> list[str]:
    """The loss-term names logged in metrics rows (e.g. forward_kl, ce), in first-seen order; `weight/...`,
    `temperature/...` (schedules) and `grad_norm/...` (the debugger) are not terms."""
    keys: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k not in META and not k.startswith("eval_") and "/" not in k and isinstance(v, (int, float)) \
                    and k not in keys:
                keys.append(k)
    return keys


def kl_key(rows: list[dict]) -> str | None:
    """The training KL term to plot: forward_kl if logged, else the first term with 'kl' in its name."""
    terms = term_keys(rows)
    if "forward_kl" in terms:
        return "forward_kl"
    return next((t for t in terms if "kl" in t), None)


def heldout_kl_keys(rows: list[dict]) -> list[tuple[str, str]]:
    """(metrics key, what it is measured against) of every held-out KL series: `eval_kl` is against the
    teacher, `eval_<source>_kl` against another source (a cache's stored distribution)."""
    keys = sorted({k for r in rows for k in r if k.startswith("eval_") and k.endswith("_kl") or k == "eval_kl"})
    return [(k, "teacher" if k == "eval_kl" else k[len("eval_"):-len("_kl")]) for k in keys]


def series(rows: list[dict], key: str) -> tuple[list, list]:
    """(steps, values) of the rows where `key` holds a number."""
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and "step" in r]
    return [p[0] for p in pts], [p[1] for p in pts]
