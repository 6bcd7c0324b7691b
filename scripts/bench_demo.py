"""The demo as a new user waits for it: wall time, where it went, and the student it gives, per variant.

    python scripts/bench_demo.py --variant current= --variant fast="student.span_fit_steps=60" --rounds 1

Each variant is `NAME=OVERRIDES` (space-separated key.path=value added to configs/demo.yaml). The variants
run one after another, alternating round by round, each from scratch: its own output folder and its own
empty kdistill cache (so the teacher writes its data again, as on a fresh clone). Prints, per run, the
wall time of the whole command, the phases of eval.json (teacher, data, student, ..., speed) with the span
fit's and repair's own seconds, and the held-out KL and top-1 agreement against the teacher; then one
Markdown row per run for docs/benchmarks.md. Check `uptime` first: a busy machine stretches every number.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _seconds(part) -> float | None:
    return part.get("seconds") if isinstance(part, dict) else None  # a skipped part is a sentence


def run(name: str, overrides: list[str], work: Path, threads: str) -> dict:
    out, cache = work / f"run-{name}", work / f"cache-{name}"
    env = {**os.environ, "KDISTILL_CACHE": str(cache)}
    if threads:
        env["KDISTILL_THREADS"] = threads
    cmd = [sys.executable, "-m", "kdistill", "distill", "--config", str(ROOT / "configs" / "demo.yaml"),
           *overrides, f"output_dir={out}", "--overwrite"]
    start = time.time()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.time() - start
    if done.returncode != 0:
        sys.exit(f"{name}: exit {done.returncode}\n{done.stderr[-3000:]}")
    result = json.loads((out / "eval.json").read_text())
    init = result.get("student_init") or {}
    return {"name": name, "overrides": " ".join(overrides), "wall_s": wall, "phases": result.get("phases", {}),
            "span_fit_s": _seconds(init.get("span_fit")), "repair_s": _seconds(init.get("repair")),
            "kl": result["heldout"]["kl"], "top1": result["heldout"]["top1_agreement"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", action="append", required=True, help="NAME=OVERRIDES (may be empty)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", default="", help="KDISTILL_THREADS for the runs (default: auto)")
    p.add_argument("--keep", help="keep the runs in this folder (default: a temporary one)")
    args = p.parse_args()
    variants = [(v.partition("=")[0], shlex.split(v.partition("=")[2])) for v in args.variant]
    print(f"uptime: {os.getloadavg()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="kdistill-demo-") as tmp:
        work = Path(args.keep or tmp)
        for r in range(args.rounds):
            for name, overrides in variants:
                row = run(f"{name}{r}", overrides, work, args.threads)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("\n| variant | overrides | wall | " + " | ".join(rows[0]["phases"]) + " | span fit | repair | KL | top-1 |")
    print("|---" * (len(rows[0]["phases"]) + 7) + "|")
    for row in rows:
        print(f"| {row['name']} | `{row['overrides'] or '(demo.yaml)'}` | {row['wall_s'] / 60:.1f} min | "
              + " | ".join(f"{v:.0f} s" for v in row["phases"].values())
              + f" | {row['span_fit_s']} s | {row['repair_s']} s | {row['kl']:.3f} | {row['top1']:.1%} |")


if __name__ == "__main__":
    main()
