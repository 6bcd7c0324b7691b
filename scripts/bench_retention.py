"""Retention on real tasks: teacher and students on benchmark questions that ship on PyPI, side by side.

    python scripts/bench_retention.py --student runs/demo/student [--student runs/long/student] --teacher default
    python scripts/bench_retention.py --write-tasks runs/retention_tasks     # only write the task files

The questions come from files inside the `lm-eval` package (a test extra of kdistill; nothing is
downloaded): MMLU's dev questions (the 5 worked examples of each of its 57 subjects, in lm-eval's
flan_cot_fewshot prompts) as 4-way multiple choice, and BIG-Bench Hard's worked examples (3 per task, in
its cot_fewshot YAMLs) as multiple choice where the answer is one of a fixed set (an option letter,
True/False, Yes/No, valid/invalid) and as exact match where it is free text. They are written as kdistill
task files (kdistill/data/task_files.py) and scored by `kdistill eval --tasks` for the teacher and each
student: accuracy with its standard error, the task's chance and best-constant baseline, retention
student/teacher (n/a where the teacher does not beat the baseline by two standard errors:
kdistill/evaluation/chance.py) and retention above chance, (student - baseline) / (teacher - baseline).
These are the few-shot examples of the benchmarks, not their test sets: a model may have seen them, and
n is small (the standard error says how small); use them to compare students of one teacher, not to
compare with published scores.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import yaml

OPTION = re.compile(r"\(([A-R])\)\s*(.*?)(?=\s*\([A-R]\)\s|$)", re.S)
FIXED = [("True", "False"), ("Yes", "No"), ("valid", "invalid"), ("yes", "no")]


def lm_eval_tasks() -> Path:
    try:
        import lm_eval
    except ImportError:
        sys.exit("bench_retention needs lm-eval's task files: pip install 'kdistill[test]' (or lm-eval)")
    return Path(lm_eval.__file__).parent / "tasks"


def mmlu_dev(tasks: Path) -> list[dict]:
    """MMLU's dev questions as 4-way multiple choice (lm-eval's MMLU prompt: question, lettered options,
    'Answer:', the letter as the continuation)."""
    prompts = json.loads((tasks / "mmlu" / "flan_cot_fewshot" / "_cot_prompts.json").read_text())
    records = []
    for subject, text in sorted(prompts.items()):
        for block in text.split("\n\nQ: ")[1:]:
            question, _, rest = block.partition("\n(A) ")
            options_line, _, answer_text = ("(A) " + rest).partition("\nA: ")
            found = re.search(r"answer is \(([A-D])\)", answer_text)
            options = [o.strip() for _, o in OPTION.findall(options_line)]
            if not found or len(options) != 4:
                continue
            lettered = "\n".join(f"{'ABCD'[i]}. {o}" for i, o in enumerate(options))
            records.append({"context": f"{question.strip()}\n{lettered}\nAnswer:", "choices": list("ABCD"),
                            "answer": "ABCD".index(found.group(1)), "subject": subject})
    return records


def _bbh_answer(target: str) -> str | None:
    found = re.search(r"So the answer is (.+?)\.?\s*$", target.strip())
    return found.group(1).strip() if found else None


def bbh_examples(tasks: Path) -> tuple[list[dict], list[dict]]:
    """BIG-Bench Hard's worked examples: (multiple choice, exact match). Multiple choice where the input
    lists lettered options or the answer is one of a fixed pair; the rest by exact match of a greedy answer."""
    mc, gen = [], []
    for path in sorted((tasks / "bbh" / "cot_fewshot").glob("*.yaml")):
        spec = yaml.safe_load(path.read_text().replace("!function", ""))
        for sample in (spec.get("fewshot_config") or {}).get("samples", []):
            answer = _bbh_answer(sample["target"])
            if answer is None:
                continue
            question = sample["input"].strip()
            letters = [m.group(1) for m in re.finditer(r"^\(([A-R])\)", question, re.M)]
            pair = next((p for p in FIXED if answer in p), None)
            if letters and re.fullmatch(r"\([A-R]\)", answer):
                mc.append({"context": f"Q: {question}\nA: The answer is", "choices": [f"({x})" for x in letters],
                           "answer": f"{answer}", "task": path.stem})
            elif pair:
                mc.append({"context": f"Q: {question}\nA: The answer is", "choices": list(pair), "answer": answer,
                           "task": path.stem})
            else:
                gen.append({"prompt": f"Q: {question}\nA: The answer is", "answer": answer, "task": path.stem})
    return mc, gen


def write_tasks(folder: Path) -> list[Path]:
    tasks = lm_eval_tasks()
    mc, gen = bbh_examples(tasks)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, records in (("mmlu_dev", mmlu_dev(tasks)), ("bbh_mc", mc), ("bbh_gen", gen)):
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        written.append(path)
        print(f"{path}: {len(records)} records")
    return written


def above_baseline(student: float, teacher: float, base: float) -> float | None:
    return (student - base) / (teacher - base) if teacher > base else None


def table(name: str, result: dict) -> list[str]:
    rows = []
    for task, b in result["benchmarks"].items():
        metric = b["metric"]
        t, s = b["teacher"], b["student"]
        kept = above_baseline(s[metric], t[metric], b["baseline"])
        rows.append(f"| {name} | {task} | {b['n']} | {b['chance']:.1%} / {b['baseline']:.1%} | "
                    f"{t[metric]:.1%} ± {t[metric + '_stderr']:.1%} | {s[metric]:.1%} ± {s[metric + '_stderr']:.1%} | "
                    + (f"{b['retention']:.2f}" if b.get("retention") is not None else "n/a") + " | "
                    + (f"{kept:.2f}" if kept is not None else "n/a") + " |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", action="append", default=[], help="student folder (repeat for several)")
    p.add_argument("--teacher", default="default")
    p.add_argument("--tasks-dir", default="runs/retention_tasks", help="where the task files are written")
    p.add_argument("--write-tasks", metavar="DIR", help="only write the task files to DIR")
    p.add_argument("--limit", type=int, help="at most this many records of each task")
    args = p.parse_args()
    if args.write_tasks:
        write_tasks(Path(args.write_tasks))
        return
    if not args.student:
        p.error("give --student (or --write-tasks DIR)")
    from kdistill import api

    paths = write_tasks(Path(args.tasks_dir))
    lines = ["| student | task | n | chance / baseline | teacher | student | retention | above baseline |",
             "|---|---|---|---|---|---|---|---|"]
    for student in args.student:
        start = time.time()
        result = api.evaluate(student, args.teacher, tasks=[str(x) for x in paths], limit=args.limit,
                              measure_speed=False, heldout=False)
        lines += table(student, result)
        mean = result.get("task_retention")
        print(f"{student}: {time.time() - start:.0f} s, mean task retention "
              + (f"{mean:.2f}" if mean is not None else "n/a (the teacher beats no baseline)"), flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
