"""Task files, read into records: one file is one benchmark task (evaluation scores it; data filters
keep its text out of training data).

    task = read_task("tests/fixtures/tasks/tiny_mc.jsonl")   # {"name", "kind", "records", ...}

One file is one task, named after the file (`arc_tiny.jsonl` -> `arc_tiny`); one JSON object a line.

Multiple choice (HellaSwag / ARC / MMLU style), scored by log-likelihood:

    {"context": "The capital of France is", "choices": ["Paris.", "bread."], "answer": 0}

`answer` is the index of the right choice (or its text); where several choices are right, `answers`
lists all their indices (a pick among them counts as right). Each choice is scored as the continuation
" " + choice after the context, as lm-eval's `multiple_choice` does (spaces that end the context move
to the continuation; the pair is tokenized whole and the context's tokens cut off the front).
`acc`: the choice with the highest summed log-likelihood is right; `acc_norm`: the same with the
log-likelihood divided by the choice's length in characters.

Generative, scored by exact match of a greedy completion:

    {"prompt": "Q: What is two plus two?\\nA:", "answer": "four"}      (answer: a string or a list)

Greedy decoding stops at the first newline, at the end-of-text token or after `max_new_tokens`.
`exact_match`: the completion equals an accepted answer once both are lowercased, stripped of
punctuation and of surrounding whitespace (lm-eval's exact_match with ignore_case, ignore_punctuation).

`--tasks` also takes a BIG-bench `task.json` (task_bigbench.py) and an lm-eval task YAML
(task_lm_eval.py); both become the records above, with the task's own delimiter between context and
choice and its own stop strings for generation.

"""
from __future__ import annotations

import json
from pathlib import Path

from kdistill.base.errors import DataError

MC_KEYS, GEN_KEYS = ("context", "choices", "answer"), ("prompt", "answer")


def _check_record(rec, where: str) -> str:
    """The record's kind; DataError naming `where` (file and line) when it is neither format."""
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if "choices" in rec:
        missing = [k for k in MC_KEYS if k not in rec]
        if missing or not isinstance(rec["choices"], list) or len(rec["choices"]) < 2:
            raise DataError(f"{where}: a multiple-choice record needs context, choices (a list of 2 or more "
                            f"strings) and answer; missing or wrong: {missing or ['choices']}")
        if not isinstance(rec["context"], str) or not rec["context"].strip():
            raise DataError(f"{where}: context is empty; give the question or the start of the sentence")
        if not all(isinstance(c, str) and c for c in rec["choices"]):
            raise DataError(f"{where}: every choice must be a non-empty string")
        answer = rec["answer"]
        if isinstance(answer, str) and answer not in rec["choices"]:
            raise DataError(f"{where}: answer {answer!r} is not one of the choices; give its index or its text")
        if not isinstance(answer, str) and not (isinstance(answer, int) and 0 <= answer < len(rec["choices"])):
            raise DataError(f"{where}: answer {answer!r} is not an index into the {len(rec['choices'])} choices")
        several = rec.get("answers")
        if several is not None and not (isinstance(several, list) and several and all(
                isinstance(a, int) and 0 <= a < len(rec["choices"]) for a in several)):
            raise DataError(f"{where}: answers must list the indices of every right choice, e.g. [0, 2]")
        return "multiple_choice"
    if "prompt" in rec and "answer" in rec:
        if not isinstance(rec["prompt"], str) or not rec["prompt"]:
            raise DataError(f"{where}: prompt must be a non-empty string")
        return "generative"
    raise DataError(f"{where}: a task record is either multiple choice {{\"context\", \"choices\", \"answer\"}} "
                    f"or generative {{\"prompt\", \"answer\"}}; this one has keys {sorted(rec)}")


def read_task(path: str | Path, limit: int | None = None) -> dict:
    """One task file -> {"name", "kind", "path", "records", "format", "delimiter", "until", "max_new_tokens"}:
    JSONL (below), a BIG-bench task.json or an lm-eval YAML; all records must be of one kind."""
    path = Path(path)
    if path.is_dir() and (path / "task.json").is_file():
        path = path / "task.json"
    if not path.is_file():
        raise DataError(f"--tasks: {path} does not exist; give a JSONL file (format: kdistill/data/task_files.py), "
                        "a BIG-bench task.json or an lm-eval task YAML")
    if path.suffix in (".json", ".yaml", ".yml"):
        from kdistill.data.task_bigbench import read_bigbench
        from kdistill.data.task_lm_eval import read_lm_eval_yaml

        task = read_bigbench(path) if path.suffix == ".json" else read_lm_eval_yaml(path)
        for i, rec in enumerate(task["records"]):
            _check_record(rec, f"{path}, {'example' if task['format'] == 'bigbench' else 'doc'} {i}")
        return _limit(task, limit)
    return _limit(read_jsonl_task(path), limit)


def _limit(task: dict, limit: int | None) -> dict:
    return {**task, "records": task["records"][:limit]} if limit else task


def read_jsonl_task(path: Path) -> dict:
    """A kdistill JSONL task file (the module docstring's format)."""
    records, kind = [], None
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {line_no}: not valid JSON ({e.msg}); one JSON object a line") from None
        this = _check_record(rec, f"{path}, line {line_no}")
        if kind is not None and this != kind:
            raise DataError(f"{path}, line {line_no}: a {this} record in a {kind} task; one kind a file")
        kind = this
        if this == "multiple_choice" and isinstance(rec["answer"], str):
            rec = {**rec, "answer": rec["choices"].index(rec["answer"])}
        records.append(rec)
    if not records:
        raise DataError(f"{path}: no records; write one JSON object a line")
    return {"name": path.stem, "kind": kind, "path": str(path), "records": records, "format": "jsonl",
            "delimiter": " ", "until": ["\n"], "max_new_tokens": None}
