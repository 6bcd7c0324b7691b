"""eval.json keeps every measurement with when and how it was taken, and a partial rerun never erases one.

A result's measurements come in groups; each group a command measured gets a line in eval.json's
`measured` map (a benchmark row carries its own `measured`):

| group       | fields                                                                                      |
|-------------|---------------------------------------------------------------------------------------------|
| heldout     | heldout and heldout_data (what the held-out text was); heldout_<source> is a group of its own |
| exposure    | exposure                                                                                    |
| size        | teacher/student parameters and size_on_disk_mb; compression, size_ratio                     |
| speed       | every other teacher/student field (tokens_per_s, ttft_ms, *_rss_mb, error, ...); speedup,   |
|             | ttft_speedup, memory_ratio                                                                  |
| completions | prompts, completions, completion_settings                                                   |

A `measured` line is {"time" (UTC, ISO 8601), "command", "student", "teacher", "device", "on" (CPU or GPU
name), "threads", "teacher_dtype", "kdistill" (version)}. `merge(old, new)` replaces the fields of the groups `new` measured (all of them: a
failed speed measurement leaves no old tokens/s beside its error) and keeps every other field, with its
own `measured` line; the ratios and the mean task retention are then recomputed from the merged fields,
so a speed-up never stands beside missing speeds.
"""
from __future__ import annotations

import datetime
import os
import platform

from kdistill.evaluation.compare import ratios
from kdistill.evaluation.tasks import retention_summary

SIZE_KEYS = ("parameters", "size_on_disk_mb")
RATIO_GROUPS = {"compression": "size", "size_ratio": "size", "speedup": "speed", "ttft_speedup": "speed",
                "memory_ratio": "speed"}
TOP_GROUPS = {"heldout_data": "heldout", "exposure": "exposure", "prompts": "completions",
              "completions": "completions", "completion_settings": "completions"}
DERIVED = ("task_retention", "task_retention_tasks", "task_retention_excluded", "retention")


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def how(command: str, student, teacher: str, device, teacher_dtype) -> dict:
    """The `measured` line of one command: when, the command line, what against what, on what."""
    import torch

    from kdistill import __version__

    hw = hardware(device)
    return {"time": now(), "command": command, "student": str(student), "teacher": str(teacher),
            "device": str(device), "on": hw.get("gpu") or f"{hw['cpu']}, {hw['cpu_cores']} cores",
            "threads": torch.get_num_threads(), "teacher_dtype": str(teacher_dtype).replace("torch.", ""),
            "kdistill": __version__}


def unrecorded(groups_: set[str], when: str | None) -> dict:
    """`measured` lines for the groups of an eval.json written before kdistill kept them."""
    line = {"time": when, "command": "not recorded (eval.json written before kdistill kept how each number "
                                     "was measured)"}
    return {g: line for g in groups_}


def groups(result: dict) -> set[str]:
    """The measurement groups present in a result."""
    found = {g for g in map(_group_of, result) if g is not None and g not in RATIO_GROUPS.values()}
    sides = [result.get("teacher") or {}, result.get("student") or {}]
    if any(k in side for side in sides for k in SIZE_KEYS):
        found.add("size")
    if any(k not in SIZE_KEYS for side in sides for k in side):
        found.add("speed")
    return found


def stamp(result: dict, line: dict) -> dict:
    """The result with `line` as the `measured` record of every group it holds and of every benchmark row."""
    out = {**result, "measured": {**(result.get("measured") or {}), **{g: line for g in groups(result)}}}
    if result.get("benchmarks"):
        out["benchmarks"] = {name: {**row, "measured": line} for name, row in result["benchmarks"].items()}
    return out


def _group_of(key: str) -> str | None:
    if key in TOP_GROUPS:
        return TOP_GROUPS[key]
    if key == "heldout" or key.startswith("heldout_") and not key.endswith("_start"):
        return key  # against the teacher, or against another source (heldout_cache, ...)
    return RATIO_GROUPS.get(key)


def _side(old: dict, new: dict, fresh: set[str]) -> dict:
    """One model's fields: the old ones of groups not measured again, then the new ones."""
    keep = {k: v for k, v in old.items() if ("size" if k in SIZE_KEYS else "speed") not in fresh}
    return {**keep, **new}


def merge(old: dict, new: dict, old_time: str | None = None) -> dict:
    """`old` eval.json updated with the `new` result (see the module docstring). Groups of `old` that have
    no `measured` line get one saying so, dated `old_time` (the file's modification time)."""
    fresh = groups(new)
    old = {**old, "measured": {**unrecorded(groups(old), old_time), **(old.get("measured") or {})}} if old else old
    out = {k: v for k, v in old.items() if k not in DERIVED and _group_of(k) not in fresh}
    for key, value in new.items():
        if key not in ("teacher", "student", "benchmarks", "measured") and key not in DERIVED:
            out[key] = value
    for side in ("teacher", "student"):
        if side in old or side in new:
            out[side] = _side(old.get(side) or {}, new.get(side) or {}, fresh)
    bench = {**(old.get("benchmarks") or {}), **(new.get("benchmarks") or {})}
    if bench:
        out["benchmarks"] = bench
        out.update(retention_summary(bench))
    out["measured"] = {**(old.get("measured") or {}), **(new.get("measured") or {})}
    for key in RATIO_GROUPS:
        out.pop(key, None)
    out.update(ratios(out.get("teacher") or {}, out.get("student") or {}))
    return out


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device) -> dict:
    """What a measurement ran on: device and its name, cores, torch threads, library versions."""
    import torch
    import transformers

    info = {"device": str(device), "cpu": _cpu_name(), "cpu_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "platform": platform.platform(terse=True)}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def distill_record(result: dict, cfg, run_path, device, dtype, train_examples: int, heldout_examples: int) -> dict:
    """eval.json of a finished `distill`: the result stamped with the run's command, its data sizes and
    the hardware it ran on."""
    line = how(f"kdistill distill --config {run_path}/config.yaml", f"{run_path}/student", cfg.teacher.model,
               device, dtype)
    out = stamp(result, line)
    out["data_sizes"] = {"train_examples": train_examples, "heldout_examples": heldout_examples}
    out["hardware"] = hardware(device)
    return out
