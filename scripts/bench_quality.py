"""Quality per unit of compute: held-out KL, top-1 agreement and perplexity at steps 0, 20 and 60 for
shallow students of the embedded teacher, kdistill's defaults against a seed-style baseline, in one run.

    python scripts/bench_quality.py                         # 4- and 8-layer students, 60 steps of 8 x 128
    python scripts/bench_quality.py --layers 4 --steps 20 --eval-every 10
    python scripts/bench_quality.py --recipe "name=train.lr=1e-3 loss.t2_scale=false"   # a candidate row
    python scripts/bench_quality.py --jobs 2 --keep runs/quality      # two rows at once, 1 thread each
    python scripts/bench_quality.py --samples 600 --keep runs/quality-600   # a corpus of 600 answers
    python scripts/bench_quality.py --budget 6 --recipe "nospan=student.span_fit_steps=0"   # 6 minutes a row

Every row is `kdistill distill --config configs/demo.yaml` (the embedded SmolLM2-135M teacher and its
teacher-written corpus, cached in $KDISTILL_CACHE after the first run, batch 8 x 128, 1 thread) with the
row's overrides; `--samples` sets the corpus size (the demo's 80 answers: 60 steps are ~7 epochs of its
71 training answers, so rows end up measuring how well a student generalises from few answers); the numbers are the held-out rows of its metrics.jsonl (the run's own held-out split,
against the real teacher). Rows:
- default: kdistill's defaults (importance-chosen layers, the span fit, the residual-stream repair,
  forward KL + 0.1 CE, lr 1e-3 with warmup + cosine);
- previous: the defaults when issue 19 was filed (no span fit, no repair, lr 5e-4);
- seed-style: `α·T²·kl_div(batchmean) + (1−α)·CE` with T=2, α=0.5, constant lr, evenly spaced layers;
- each --recipe NAME=OVERRIDES: the defaults plus those overrides (a candidate for a better recipe).
Runs of one size use the same data and steps, so rows compare at equal tokens. An override that holds
spaces is quoted inside the recipe (shell-style: `"name=train.lr=1e-3 'loss.terms=[{kind: ce}]'"`).
`--budget MIN` matches rows by wall clock instead of steps: every row gets `train.time_budget=MIN` (no step
count: the run sizes its start-up fits and steps to the minutes, counted from the command's start, the
cached corpus read included) and the table gives each row's held-out numbers at its last step, the steps
it trained and the seconds of its student start-up and training (eval.json `phases`); run such rows one at
a time (`--jobs 1`), as timing decides what they train.
Quality does not depend on timing, so `--jobs 2` runs two rows side by side; the step-time column is
then shared cores and only compares rows run the same way. `fit s` is the start-up fits' seconds (span fit
and repair, from the run's eval.json; the layer choice before them is the same in every row).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kdistill.report.runs import read_metrics

ROOT = Path(__file__).resolve().parents[1]
SEED_STYLE = ["loss.terms=[{kind: forward_kl, weight: 0.5, temperature: 2.0}, {kind: ce, weight: 0.5}]",
              "loss.t2_scale=true", "train.lr=5e-4", "train.warmup_steps=0", "train.min_lr_ratio=1.0",
              "student.layer_selection=even", "student.repair_steps=0", "student.span_fit_steps=0"]
# the defaults before the span fit, the repair and the short-run lr
PREVIOUS = ["student.span_fit_steps=0", "student.repair_steps=0", "train.lr=5e-4"]


def run(layers: int, steps: int, eval_every: int, overrides: list[str], out: Path, samples: int = 80,
        budget: float | None = None) -> dict[int, dict]:
    """Held-out metrics by step of one `kdistill distill` run (`budget`: minutes instead of `steps`)."""
    length = [f"train.time_budget={budget}", "train.max_steps=", "train.checkpoint_every=1000"] if budget \
        else [f"train.max_steps={steps}", f"train.checkpoint_every={steps}"]
    args = [sys.executable, "-m", "kdistill", "distill", "--config", "configs/demo.yaml", "--overwrite",
            f"output_dir={out}", f"data.generate.num_samples={samples}", f"student.num_layers={layers}",
            *length, f"train.eval_every={eval_every}", "train.threads=1",
            "eval.measure_speed=false", "eval.prompts=[Once upon a time]", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KDISTILL_THREADS": "1"}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)}\nfailed:\n{done.stderr[-3000:]}")
    rows = read_metrics(out / "metrics.jsonl")  # the one checked reader of metrics.jsonl
    by_step = {r["step"]: r for r in rows if "eval_kl" in r}
    times = [b["time"] - a["time"] for a, b in zip(rows, rows[1:])
             if "loss" in a and "loss" in b and "eval_kl" not in b and b["step"] == a["step"] + 1]
    by_step["step_s"] = statistics.median(times) if times else float("nan")
    result = json.loads((out / "eval.json").read_text())
    init = result.get("student_init", {})
    by_step["phases"] = result.get("phases", {})
    by_step["last"] = max(k for k in by_step if isinstance(k, int))
    by_step["fit_s"] = sum(part["seconds"] for part in (init.get("span_fit"), init.get("repair"))
                           if isinstance(part, dict))  # the start-up fits (the layer choice is the same for all)
    return by_step


def table(results: dict, steps: list[int], step_time: bool = True) -> str:
    """Markdown rows; `step_time`: add the median seconds per step (meaningful only for rows run alike)."""
    head = "| layers | recipe | " + " | ".join(f"KL@{s} | top-1@{s} | ppl@{s}" for s in steps) + " |"
    head += " s/step | fit s |" if step_time else ""
    lines = [head, "|" + "---|" * (2 + 2 * step_time + 3 * len(steps))]
    for (layers, name), by_step in results.items():
        cells = []
        for s in steps:
            r = by_step.get(s, {})
            cells += [f"{r['eval_kl']:.3f}" if "eval_kl" in r else "–",
                      f"{100 * r['eval_top1']:.1f}%" if "eval_top1" in r else "–",
                      f"{r['eval_ppl']:.4g}" if "eval_ppl" in r else "–"]
        time_cell = f" {by_step['step_s']:.2f} | {by_step.get('fit_s', float('nan')):.0f} |" if step_time else ""
        lines.append(f"| {layers} | {name} | " + " | ".join(cells) + " |" + time_cell)
    return "\n".join(lines)


def budget_table(results: dict) -> str:
    """Markdown rows of wall-clock-matched runs: held-out numbers at each row's last step."""
    lines = ["| layers | recipe | KL@0 | KL@end | top-1@end | ppl@end | steps | student start-up s | training s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (layers, name), by_step in results.items():
        first, end, ph = by_step[0], by_step[by_step["last"]], by_step["phases"]
        lines.append(f"| {layers} | {name} | {first['eval_kl']:.3f} | {end['eval_kl']:.3f} | "
                     f"{100 * end['eval_top1']:.1f}% | {end['eval_ppl']:.4g} | {by_step['last']} | "
                     f"{ph.get('student', float('nan')):.0f} | {ph.get('training', float('nan')):.0f} |")
    return "\n".join(lines)


def print_kept(folder: Path) -> None:
    """The table of every row a --keep run left in `folder` (rows of several invocations together)."""
    kept = [json.loads(f.read_text()) for f in sorted(folder.glob("*/quality.json"))]
    order = {"default": 0, "previous": 1, "seed-style": 2}
    kept.sort(key=lambda r: (r["layers"], order.get(r["recipe"], 3), r["recipe"]))
    results = {(r["layers"], r["recipe"]): {(int(k) if k.isdigit() else k): v for k, v in r["by_step"].items()}
               for r in kept}
    steps = sorted({0, 20} | {r["steps"] for r in kept})  # every row's own last step
    corpora = sorted({r.get("samples", 80) for r in kept})
    print(f"corpus of {' / '.join(map(str, corpora))} teacher answers" + (" (rows of different corpora do not "
          "compare)" if len(corpora) > 1 else ""))
    print(table(results, steps, step_time=False))
    for r in kept:
        print(f"- {r['layers']}-layer {r['recipe']}: {' '.join(r['overrides']) or '(defaults)'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, nargs="+", default=[4, 8])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--recipe", action="append", default=[], metavar="NAME=OVERRIDES",
                   help="a candidate row: the defaults plus space-separated key.path=value overrides")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these rows (default, previous, seed-style "
                   "and the --recipe names)")
    p.add_argument("--samples", type=int, default=80, help="answers the teacher writes for the corpus (80: the "
                   "demo's; 10%% are held out; generated once and cached)")
    p.add_argument("--jobs", type=int, default=1, help="rows run at once (1 thread each)")
    p.add_argument("--budget", type=float, metavar="MIN", help="wall-clock-matched rows: train.time_budget=MIN "
                   "for every row instead of --steps")
    p.add_argument("--keep", type=Path, help="keep each row's run folder and results.json here")
    p.add_argument("--table", type=Path, metavar="DIR", help="only print the table of the rows kept in DIR")
    args = p.parse_args()
    if args.table:
        return print_kept(args.table)
    recipes = {"default": [], "previous": PREVIOUS, "seed-style": SEED_STYLE}
    for spec in args.recipe:
        name, _, overrides = spec.partition("=")
        recipes[name] = shlex.split(overrides)
    if args.only:
        recipes = {k: v for k, v in recipes.items() if k in args.only}
    print("load average:", os.getloadavg(), flush=True)
    rows = [(layers, name) for layers in args.layers for name in recipes]
    with tempfile.TemporaryDirectory(prefix="kdistill-quality-") as tmp:
        base = args.keep or Path(tmp)

        def one(row):
            layers, name = row
            by_step = run(layers, args.steps, args.eval_every, recipes[name], base / f"{layers}-{name}", args.samples,
                          args.budget)
            (base / f"{layers}-{name}" / "quality.json").write_text(json.dumps(
                {"layers": layers, "recipe": name, "overrides": recipes[name], "steps": args.steps,
                 "samples": args.samples, "budget": args.budget,
                 "by_step": {str(k): v for k, v in by_step.items()}}, indent=1))
            last = by_step[max(k for k in by_step if isinstance(k, int))]
            print(f"{layers} layers, {name}: held-out KL {by_step[0]['eval_kl']:.3f} -> {last['eval_kl']:.3f}, "
                  f"top-1 {100 * last['eval_top1']:.1f}%", flush=True)
            return by_step

        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            results = dict(zip(rows, pool.map(one, rows)))
    if args.budget:
        print(f"\n{args.budget:g} minutes a row (train.time_budget), 1 thread, corpus of {args.samples} teacher "
              "answers\n" + budget_table(results))
        return
    steps = sorted({0, args.eval_every, args.steps} & {s for r in results.values() for s in r if isinstance(s, int)})
    print(f"\n{args.steps} steps of 8 x 128 tokens each, corpus of {args.samples} teacher answers\n"
          + table(results, steps))


if __name__ == "__main__":
    main()
