"""BIG-bench JSON tasks (`task.json`) read as kdistill task records, so `--tasks` takes them as they are.

    kdistill eval --run runs/demo --tasks BIG-bench/bigbench/benchmark_tasks/navigate/task.json

A task.json holds `examples`. The task is multiple choice when every example has `target_scores`
({choice text: score}), else generative when every example has `target` (a string or a list of accepted
strings). Each example's prompt is BIG-bench's zero-shot query:

    task_prefix + example_input_prefix + input [+ choice_prefix + choice, for every choice] + example_output_prefix

with the defaults "", "\\nQ: ", "\\n  choice: " and "\\nA: "; the choices are appended (unless
`append_choices_to_input` is false) in the file's order. Multiple choice: each choice is scored as the
text right after the prompt (no delimiter added, so "\\nA: " + "Paris"); the right choices are those
with the highest score, so acc is BIG-bench's multiple_choice_grade for 0/1 scores. Generative: greedy
decoding until a newline (or the task's `stop_string`), then exact match as for JSONL tasks.

The task is named by its `name` field, else by its folder (`navigate/task.json` -> `navigate`). A task
split into subtasks has a task.json per subtask folder: give those.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from kdistill.base.errors import DataError

DEFAULTS = {"task_prefix": "", "example_input_prefix": "\nQ: ", "choice_prefix": "\n  choice: ",
            "example_output_prefix": "\nA: ", "append_choices_to_input": True}


def is_bigbench(data) -> bool:
    return isinstance(data, dict) and "examples" in data


def _name(data: dict, path: Path) -> str:
    name = data.get("name") if isinstance(data.get("name"), str) else None
    name = name or (path.parent.name if path.stem == "task" else path.stem)
    return re.sub(r"\W+", "_", name).strip("_") or "bigbench"


def _prompt(example: dict, fmt: dict, choices: list[str] | None) -> str:
    text = fmt["task_prefix"] + fmt["example_input_prefix"] + example["input"]
    if choices and fmt["append_choices_to_input"]:
        text += "".join(fmt["choice_prefix"] + c for c in choices)
    return text + fmt["example_output_prefix"]


def _mc_record(example: dict, fmt: dict, where: str) -> dict:
    scores = example["target_scores"]
    if not isinstance(scores, dict) or len(scores) < 2:
        raise DataError(f"{where}: target_scores must map 2 or more choices to their scores")
    choices = list(scores)
    best = max(scores.values())
    rights = [i for i, c in enumerate(choices) if scores[c] == best]
    record = {"context": _prompt(example, fmt, choices), "choices": choices, "answer": rights[0]}
    if len(rights) > 1:
        record["answers"] = rights
    return record


def _gen_record(example: dict, fmt: dict) -> dict:
    return {"prompt": _prompt(example, fmt, None), "answer": example["target"]}


def bigbench_task(data: dict, path: Path) -> dict:
    """A task dict ({"name", "kind", "path", "records", "format", "delimiter", "until"}) from a parsed task.json."""
    examples = data["examples"]
    if data.get("subtasks"):
        raise DataError(f"{path}: a BIG-bench task with subtasks; give each subtask's task.json")
    if not isinstance(examples, list) or not examples:
        raise DataError(f"{path}: `examples` must be a non-empty list of {{\"input\", \"target_scores\" or \"target\"}}")
    fmt = {k: data.get(k, v) for k, v in DEFAULTS.items()}
    for i, ex in enumerate(examples):
        if not isinstance(ex, dict) or not isinstance(ex.get("input"), str):
            raise DataError(f"{path}, example {i}: needs an `input` string")
    if all("target_scores" in ex for ex in examples):
        records = [_mc_record(ex, fmt, f"{path}, example {i}") for i, ex in enumerate(examples)]
        kind = "multiple_choice"
    elif all("target" in ex for ex in examples):
        records, kind = [_gen_record(ex, fmt) for ex in examples], "generative"
    else:
        bad = next(i for i, ex in enumerate(examples) if "target_scores" not in ex and "target" not in ex)
        raise DataError(f"{path}, example {bad}: every example needs `target_scores` (multiple choice) or "
                        "`target` (generative); one kind for the whole file")
    stop = data.get("stop_string")
    return {"name": _name(data, path), "kind": kind, "path": str(path), "records": records, "format": "bigbench",
            "delimiter": "", "until": [stop] if isinstance(stop, str) and stop else ["\n"]}


def read_bigbench(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); a BIG-bench task.json is one "
                        "JSON object with `examples`") from None
    if not is_bigbench(data):
        raise DataError(f"{path}: a .json task file must be a BIG-bench task.json (an object with `examples`); "
                        "for kdistill's own format write JSONL (kdistill/evaluation/tasks.py)")
    return bigbench_task(data, path)
