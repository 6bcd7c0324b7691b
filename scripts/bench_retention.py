"""Retention on real tasks: teacher and students on benchmark questions that ship on PyPI, side by side.

    python scripts/bench_retention.py --student runs/demo/student [--student runs/long/student] --teacher default
    python scripts/bench_retention.py --only analogy_mc analogy_gen --student runs/demo/student   # some tasks
    python scripts/bench_retention.py --write-tasks runs/retention_tasks     # only write the task files

The questions come from files inside packages of kdistill's test extra (nothing is downloaded). The
Google analogy test set (Mikolov et al., 2013; 19,544 questions in 14 sections, from capitals and
currencies to plurals and past tenses), as gensim ships it: 16 questions of each section, asked as
'Athens is to Greece as Baghdad is to' after two worked examples, as 4-way multiple choice (the other
choices are answers of the same section; `analogy_mc`) and as exact match of the greedy completion
(`analogy_gen`); the embedded 135M teacher is well above chance on both. From `lm-eval`: MMLU's dev
questions (the 5 worked examples of each of its 57 subjects, in lm-eval's flan_cot_fewshot prompts) as
4-way multiple choice, and BIG-Bench Hard's worked examples (3 per task, in its cot_fewshot YAMLs) as
multiple choice where the answer is one of a fixed set (an option letter, True/False, Yes/No,
valid/invalid) and as exact match where it is free text; these are the benchmarks' few-shot examples, not
their test sets, and the embedded teacher is at chance on them. All are written as kdistill task files
(kdistill/data/task_files.py) and scored by `kdistill eval --tasks` for the teacher and each student:
accuracy with its standard error, the task's chance and best-constant baseline, retention student/teacher
(n/a where the teacher does not beat the baseline by two standard errors: kdistill/evaluation/chance.py)
and retention above chance, (student - baseline) / (teacher - baseline). A model may have seen any of these
questions, and n is small (the standard error says how small): use them to compare students of one
teacher, not to compare with published scores.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import random
import re
import sys
import time
from pathlib import Path

import yaml

from kdistill.evaluation.chance import task_retention

OPTION = re.compile(r"\(([A-R])\)\s*(.*?)(?=\s*\([A-R]\)\s|$)", re.S)
ALL_TASKS = ["analogy_mc", "analogy_gen", "mmlu_dev", "bbh_mc", "bbh_gen"]
GENSIM = "4.4.0"
SHOTS = [("Paris", "France", "Rome", "Italy"), ("big", "bigger", "small", "smaller")]
SHOT_PAIRS = {(a, b) for a, b, _, _ in SHOTS} | {(c, d) for _, _, c, d in SHOTS}
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


def analogy_file() -> Path:
    """The Google analogy test set (Mikolov et al., 2013) as shipped in gensim's test data (found without
    importing gensim)."""
    spec = importlib.util.find_spec("gensim")
    path = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data" / "questions-words.txt" \
        if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        sys.exit("bench_retention's analogy tasks read questions-words.txt from gensim's test data: "
                 f"pip install 'kdistill[test]' (or gensim=={GENSIM}), or leave them out: --only mmlu_dev bbh_mc bbh_gen")
    return path


def analogies(path: Path, per_section: int = 16, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(multiple choice, exact match) from the analogy file: `per_section` questions of each of its 14
    sections (capitals, currencies, family, eight grammar relations...), drawn with `seed`, in the prompt
    'a is to b as c is to' after two worked examples of other sections. Multiple choice: the answer among
    three other answers of the same section (4-way); exact match: the greedy completion is the answer."""
    sections: dict[str, list[list[str]]] = {}
    name = None
    for line in path.read_text().splitlines():
        if line.startswith(":"):
            name = line[1:].strip()
            sections[name] = []
        elif line.strip() and name:
            sections[name].append(line.split())
    shots = "".join(f"{a} is to {b} as {c} is to {d}.\n" for a, b, c, d in SHOTS)
    rng = random.Random(seed)
    mc, gen = [], []
    for name, rows in sections.items():
        answers = sorted({r[3] for r in rows})
        rows = [r for r in rows if (r[2], r[3]) not in SHOT_PAIRS]   # the worked examples give these away
        for a, b, c, d in rng.sample(rows, min(per_section, len(rows))):
            prompt = f"{shots}{a} is to {b} as {c} is to"
            others = rng.sample([x for x in answers if x not in (a, b, c, d)], 3)
            choices = others + [d]
            rng.shuffle(choices)
            mc.append({"context": prompt, "choices": choices, "answer": choices.index(d), "section": name})
            gen.append({"prompt": prompt, "answer": d, "section": name})
    return mc, gen


def write_tasks(folder: Path, only: list[str] | None = None) -> list[Path]:
    wanted = only or ALL_TASKS
    built: dict[str, list[dict]] = {}
    if {"mmlu_dev", "bbh_mc", "bbh_gen"} & set(wanted):
        tasks = lm_eval_tasks()
        built["mmlu_dev"] = mmlu_dev(tasks)
        built["bbh_mc"], built["bbh_gen"] = bbh_examples(tasks)
    if {"analogy_mc", "analogy_gen"} & set(wanted):
        built["analogy_mc"], built["analogy_gen"] = analogies(analogy_file())
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in wanted:
        records = built[name]
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        written.append(path)
        print(f"{path}: {len(records)} records")
    return written


def above_baseline(student: float, teacher: float, base: float) -> float | None:
    return (student - base) / (teacher - base) if teacher > base else None


def table(name: str, benchmarks: dict, key: str) -> list[str]:
    """Markdown rows of one student (`key` in run_tasks' result) against the teacher."""
    rows = []
    for task, b in benchmarks.items():
        metric = b["metric"]
        t, s = b["teacher"], b[key]
        kept = above_baseline(s[metric], t[metric], b["baseline"])
        ratio, _ = task_retention(s[metric], t[metric], b["baseline"], b["n"])
        rows.append(f"| {name} | {task} | {b['n']} | {b['chance']:.1%} / {b['baseline']:.1%} | "
                    f"{t[metric]:.1%} ± {t[metric + '_stderr']:.1%} | {s[metric]:.1%} ± {s[metric + '_stderr']:.1%} | "
                    + (f"{ratio:.2f}" if ratio is not None else "n/a") + " | "
                    + (f"{kept:.2f}" if kept is not None and ratio is not None else "n/a") + " |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", action="append", default=[], metavar="[NAME=]FOLDER",
                   help="a student folder (repeat for several; NAME labels its rows)")
    p.add_argument("--teacher", default="default")
    p.add_argument("--tasks-dir", default="runs/retention_tasks", help="where the task files are written")
    p.add_argument("--write-tasks", metavar="DIR", help="only write the task files to DIR")
    p.add_argument("--limit", type=int, help="at most this many records of each task")
    p.add_argument("--only", nargs="+", choices=ALL_TASKS, help="these tasks only (default: all)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="greedy tokens for the exact-match tasks")
    p.add_argument("--out", help="also write every score (teacher and students) to this JSON file")
    args = p.parse_args()
    if args.write_tasks:
        write_tasks(Path(args.write_tasks), args.only)
        return
    if not args.student:
        p.error("give --student (or --write-tasks DIR)")
    import torch

    from kdistill.base.hardware import pick_device
    from kdistill.evaluation.tasks import run_tasks
    from kdistill.models.teacher import load_teacher
    from kdistill.run.evaluate import check_student_folder, load_student

    paths = write_tasks(Path(args.tasks_dir), args.only)
    named = [s.split("=", 1) if "=" in s else [s, s] for s in args.student]
    device = pick_device()
    start = time.time()
    teacher, tokenizer, _ = load_teacher(args.teacher, device, torch.float32)
    # every model is loaded once and the teacher scored once; the students are checked to read its tokenizer
    models = {"teacher": teacher} | {f"student {i}": load_student(folder, check_student_folder(folder), tokenizer,
                                                                   device) for i, (_, folder) in enumerate(named)}
    benchmarks = run_tasks(models, tokenizer, paths, device, args.limit, args.max_new_tokens)
    lines = ["| student | task | n | chance / baseline | teacher | student | retention | above baseline |",
             "|---|---|---|---|---|---|---|---|"]
    for i, (name, _) in enumerate(named):
        lines += table(name, benchmarks, f"student {i}")
    for task, b in benchmarks.items():
        records = [json.loads(line) for line in Path(b["path"]).read_text().splitlines()][:b["n"]]
        if b["kind"] == "multiple_choice" and all("section" in r for r in records):
            print(f"{task}, right answers by section ({', '.join(models)}):")
            for section in dict.fromkeys(r["section"] for r in records):
                rows = [i for i, r in enumerate(records) if r["section"] == section]
                print(f"  {section}: " + " ".join(
                    f"{sum(b[k]['details'][i]['pick'] == records[i]['answer'] for i in rows)}/{len(rows)}" for k in models))
    if args.out:
        for b in benchmarks.values():
            for key in models:
                b[key].pop("details", None)
        Path(args.out).write_text(json.dumps({"students": dict(named), "teacher": args.teacher,
                                              "benchmarks": benchmarks}, indent=1))
    print(f"{time.time() - start:.0f} s for the teacher and {len(named)} student(s)")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
