"""Tokens/s of 1 and 2 processes (1 thread each, gloo) on the demo workload, in one run.

    python scripts/bench_scale.py                      # 6 steps each, batch 8 x 128, ddp
    python scripts/bench_scale.py --steps 10 --mode fsdp
    python scripts/bench_scale.py --apart             # and the ceiling: 2 processes that never communicate

Runs `kdistill distill --config configs/demo.yaml` (the embedded teacher, its generated data, reused from
$KDISTILL_CACHE) once in one process and once under `torchrun --nproc_per_node=2`, with the same global
batch (train.batch_size=8: each process takes 4 rows), student.layer_selection=first_last (no
calibration passes) and no evaluation or checkpoint inside the timed steps. Step times come from the
`time` field of metrics.jsonl (step 1 is a warm-up and is left out); alternated 1, 2, 2, 1 ... for
`--rounds`. On 2 cores, 2 processes have twice the compute of 1.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from kdistill.report.runs import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def _args(steps: int, mode: str, out: Path) -> list[str]:
    return ["distill", "--config", "configs/demo.yaml", "--overwrite", f"output_dir={out}", f"train.max_steps={steps}",
            f"train.eval_every={steps}", f"train.checkpoint_every={steps}", "student.layer_selection=first_last",
            "eval.measure_speed=false", "eval.max_batches=1", "eval.prompts=[Once upon a time]", "train.threads=1",
            f"train.distributed={mode}"]


def _step_times(out: Path) -> list[float]:
    rows = read_metrics(out / "metrics.jsonl")  # the one checked reader of metrics.jsonl
    times = [r["time"] for r in rows if r["step"] >= 1]
    return [b - a for a, b in zip(times[:-1], times[1:])][:-1]  # the last step also evaluates


def run(n: int, steps: int, mode: str, out: Path) -> list[float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KDISTILL_THREADS": "1"}
    launch = [sys.executable, "-m", "kdistill"] if n == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m", "kdistill"]
    subprocess.run([*launch, *_args(steps, mode if n > 1 else "none", out)], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    return _step_times(out)


def run_apart(steps: int, tmp: Path) -> list[float]:
    """Two independent single processes at once, each with half the global batch and no communication:
    what two processes on this machine's cores can reach at best (shared memory bandwidth and caches)."""
    procs, outs = [], [tmp / f"apart{i}" for i in range(2)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KDISTILL_THREADS": "1"}
    for out in outs:
        args = _args(steps, "none", out) + ["train.batch_size=4"]
        procs.append(subprocess.Popen([sys.executable, "-m", "kdistill", *args], cwd=ROOT, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    if any(p.wait() for p in procs):
        raise SystemExit("an independent run failed; run it alone to see why")
    return [t for out in outs for t in _step_times(out)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--mode", choices=["ddp", "fsdp"], default="ddp")
    p.add_argument("--apart", action="store_true", help="also time two independent processes (the ceiling)")
    args = p.parse_args()
    print("uptime:", os.getloadavg(), flush=True)
    times = {1: [], 2: [], "apart": []}
    with tempfile.TemporaryDirectory(prefix="kdistill-scale-") as tmp:
        for r in range(args.rounds):
            for n in ((1, 2) if r % 2 == 0 else (2, 1)):
                got = run(n, args.steps, args.mode, Path(tmp) / f"run{n}")
                times[n] += got
                print(f"round {r + 1}, {n} process(es): median {statistics.median(got):.2f} s/step", flush=True)
            if args.apart:
                times["apart"] += run_apart(args.steps, Path(tmp))
    tokens = 8 * 128
    one, two = statistics.median(times[1]), statistics.median(times[2])
    print(f"{'processes':>10s}{'s/step':>10s}{'tokens/s':>10s}")
    print(f"{1:>10d}{one:10.2f}{tokens / one:10.0f}\n{2:>10d}{two:10.2f}{tokens / two:10.0f}")
    print(f"2 processes / 1 process: {one / two:.2f}x tokens/s ({args.mode})")
    if args.apart:
        apart = statistics.median(times["apart"])
        print(f"2 independent processes, half the batch each, no communication: {apart:.2f} s/step, "
              f"{one / apart:.2f}x one process (the most 2 processes reach on these cores)")


if __name__ == "__main__":
    main()
