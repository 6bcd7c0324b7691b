"""lm-eval task YAMLs for kdistill's JSONL task files, so the same benchmark runs under EleutherAI's harness.

    kdistill eval --student runs/demo/student --teacher default --tasks arc_tiny.jsonl --lm-eval-dir lm_tasks
    lm_eval --model hf --model_args pretrained=runs/demo/student --include_path lm_tasks --tasks kd_arc_tiny

A student folder is a plain transformers folder, so `--model hf` loads it unchanged. The YAML reads the
JSONL with the `json` dataset builder (no hub access) and states the scoring `tasks.py` uses: for
multiple choice, " " + choice after the context, acc and acc_norm; for generative tasks, greedy
decoding until a newline and exact_match ignoring case, punctuation and surrounding whitespace.
"""
from __future__ import annotations

import json
from pathlib import Path

from .tasks import read_task

PREFIX = "kd_"


def task_yaml(path: str | Path, max_new_tokens: int = 32) -> tuple[str, str]:
    """(lm-eval task name, YAML text) for one kdistill task file. JSON strings are valid YAML scalars."""
    task = read_task(path)
    name = PREFIX + task["name"]
    head = [f"task: {name}", "dataset_path: json", "dataset_kwargs:", "  data_files:",
            f"    test: {json.dumps(str(Path(path).resolve()))}", "test_split: test"]
    if task["kind"] == "multiple_choice":
        body = ["output_type: multiple_choice", 'doc_to_text: "{{context}}"', 'doc_to_choice: "{{choices}}"',
                'doc_to_target: "{{answer}}"', "metric_list:",
                "  - metric: acc", "    aggregation: mean", "    higher_is_better: true",
                "  - metric: acc_norm", "    aggregation: mean", "    higher_is_better: true"]
    else:
        body = ["output_type: generate_until", 'doc_to_text: "{{prompt}}"', 'doc_to_target: "{{answer}}"',
                "generation_kwargs:", '  until: ["\\n"]', "  do_sample: false", f"  max_gen_toks: {max_new_tokens}",
                "metric_list:", "  - metric: exact_match", "    aggregation: mean", "    higher_is_better: true",
                "    ignore_case: true", "    ignore_punctuation: true",
                '    regexes_to_ignore: ["^\\\\s+", "\\\\s+$"]']
    return name, "\n".join(head + body) + "\n"


def write_task_yamls(paths: list, out_dir: str | Path, max_new_tokens: int = 32) -> list[str]:
    """Write one `<name>.yaml` per task file into out_dir; returns the lm-eval task names."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for path in paths:
        name, text = task_yaml(path, max_new_tokens)
        (out_dir / f"{name}.yaml").write_text(text)
        names.append(name)
    return names


def lm_eval_command(model_dir: str, out_dir: str | Path, names: list[str]) -> str:
    return (f"lm_eval --model hf --model_args pretrained={model_dir} --include_path {out_dir} "
            f"--tasks {','.join(names)}")
