"""Peak RSS of a whole command, and which of its phases set it.

    python scripts/trace_rss.py -- .venv/bin/python -m kdistill distill --config configs/demo.yaml \
        student.num_layers=4 train.max_steps=4 output_dir=/tmp/rss --overwrite

Runs the command, samples the RSS of its process tree every 0.1 s (/proc/PID/status VmRSS, children
included), timestamps every line the command prints, and at the end prints the peak, when it happened,
and the peak within each phase (a phase starts at a printed line and lasts until the next one).
"""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path


def tree_rss_mb(pid: int) -> float:
    """RSS of `pid` and its descendants, in MB (a process that is gone counts 0)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total / 1024


def main(cmd: list[str]) -> None:
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    samples, lines = [], [(0.0, "(start)")]

    def sample():
        while proc.poll() is None:
            samples.append((time.time() - t0, tree_rss_mb(proc.pid)))
            time.sleep(0.1)

    threading.Thread(target=sample, daemon=True).start()
    for line in proc.stdout:
        for part in line.replace("\r", "\n").splitlines():
            if part.strip():
                lines.append((time.time() - t0, part.strip()[:100]))
    proc.wait()
    peak_t, peak = max(samples, key=lambda s: s[1])
    print(f"exit {proc.returncode}; peak RSS {peak:.0f} MB at {peak_t:.1f} s of {time.time() - t0:.1f} s")
    phases = []
    for (start, text), (end, _) in zip(lines, lines[1:] + [(float("inf"), "")]):
        inside = [rss for t, rss in samples if start <= t < end]
        if inside:
            phases.append((max(inside), start, text))
    for rss, start, text in sorted(phases, reverse=True)[:8]:
        print(f"{rss:8.0f} MB  from {start:7.1f} s  after: {text}")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[args.index("--") + 1:] if "--" in args else args)
