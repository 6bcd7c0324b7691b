"""lm-eval task YAMLs for kdistill's task files, so the same benchmark runs under EleutherAI's harness.

    kdistill eval --student runs/demo/student --teacher default --tasks arc_tiny.jsonl --lm-eval-dir lm_tasks
    lm_eval --model hf --model_args pretrained=runs/demo/student,dtype=float32 --device cpu --batch_size 1 \\
        --include_path lm_tasks --tasks kd_arc_tiny

A student folder is a plain transformers folder, so `--model hf` loads it unchanged; `eval` prints the
command for the student and for the teacher's folder, each with the dtype and device kdistill scored it
in. The YAML reads JSONL with the `json` dataset builder (no hub access) and states the scoring
`tasks.py` uses: for multiple choice, the task's delimiter (" " for JSONL) + choice after the context, acc
and acc_norm; for generative tasks, greedy decoding until the task's stop strings and exact_match
ignoring case, punctuation and surrounding whitespace. A JSONL task's YAML points at the file itself; a
BIG-bench or lm-eval YAML task is written out as the records kdistill scored (`kd_<name>.jsonl` beside
its YAML), so both harnesses score the same text.
"""
from __future__ import annotations

import json
from pathlib import Path

from kdistill.base import fsutil
from kdistill.base.outputs import mark_own
from kdistill.data.task_files import read_task

PREFIX = "kd_"
MC_METRICS = ["metric_list:", "  - metric: acc", "    aggregation: mean", "    higher_is_better: true",
              "  - metric: acc_norm", "    aggregation: mean", "    higher_is_better: true"]


def _records_file(task: dict, out_dir: Path, name: str, write_dir: Path) -> Path:
    """The task's records as JSONL (every MC record with its `answers` list when any has several), written
    into write_dir; returns where it will be: out_dir (write_dir is renamed to it)."""
    several = any("answers" in r for r in task["records"])
    rows = [{**r, "answers": r.get("answers", [r["answer"]])} if several else r for r in task["records"]]
    (write_dir / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return out_dir / f"{name}.jsonl"


def task_yaml(path: str | Path, max_new_tokens: int = 32, out_dir: str | Path | None = None,
              write_dir: str | Path | None = None) -> tuple[str, str]:
    """(lm-eval task name, YAML text) for one task file. JSON strings are valid YAML scalars. A task that is
    not kdistill JSONL has its records written first, to write_dir (default out_dir), named for out_dir."""
    task = read_task(path)
    name = PREFIX + task["name"]
    out_dir = Path(out_dir or ".")
    data = Path(path) if task["format"] == "jsonl" else _records_file(task, out_dir, name, Path(write_dir or out_dir))
    head = [f"task: {name}", "dataset_path: json", "dataset_kwargs:", "  data_files:",
            f"    test: {json.dumps(str(data.resolve()))}", "test_split: test"]
    if task["kind"] == "multiple_choice":
        several = any("answers" in r for r in task["records"])
        body = ["output_type: multiple_choice", 'doc_to_text: "{{context}}"', 'doc_to_choice: "{{choices}}"',
                f'doc_to_target: "{{{{{"answers" if several else "answer"}}}}}"',
                f"target_delimiter: {json.dumps(task.get('delimiter', ' '))}", *MC_METRICS]
    else:
        until = task.get("until") or ["\n"]
        body = ["output_type: generate_until", 'doc_to_text: "{{prompt}}"', 'doc_to_target: "{{answer}}"',
                "generation_kwargs:", f"  until: {json.dumps(until)}", "  do_sample: false",
                f"  max_gen_toks: {task.get('max_new_tokens') or max_new_tokens}",
                "metric_list:", "  - metric: exact_match", "    aggregation: mean", "    higher_is_better: true",
                "    ignore_case: true", "    ignore_punctuation: true",
                '    regexes_to_ignore: ["^\\\\s+", "\\\\s+$"]']
    return name, "\n".join(head + body) + "\n"


def write_task_yamls(paths: list, out_dir: str | Path, max_new_tokens: int = 32) -> list[str]:
    """Write one `<name>.yaml` per task file into out_dir (beside it, then renamed: kdistill/base/outputs.py,
    command `lm-eval`); returns the lm-eval task names."""
    out_dir = Path(out_dir)
    names = []
    with fsutil.atomic_dir(out_dir) as tmp:
        for path in paths:
            name, text = task_yaml(path, max_new_tokens, out_dir, tmp)
            (tmp / f"{name}.yaml").write_text(text)
            names.append(name)
        mark_own(tmp, "lm-eval")
    return names


def lm_eval_command(model_dir: str, out_dir: str | Path, names: list[str], dtype: str = "float32",
                    device: str = "cpu", batch_size: int = 1) -> str:
    """The whole `lm_eval` command line for one model folder, in the dtype and on the device kdistill used."""
    return (f"lm_eval --model hf --model_args pretrained={model_dir},dtype={dtype} --device {device} "
            f"--batch_size {batch_size} --include_path {out_dir} --tasks {','.join(names)}")
