"""Peak RSS of a whole command, and which of its phases set it.

    python scripts/trace_rss.py -- .venv/bin/python -m kdistill distill --config configs/demo.yaml \
        student.num_layers=4 train.max_steps=4 output_dir=/tmp/rss --overwrite

Runs the command, samples the RSS of its process tree every 0.1 s (/proc/PID/status VmRSS, children
included), timestamps every line the command prints, and at the end prints the peak, when it happened,
which processes made it up (main and children, by command line), the main process's own peak, and the
peak within each phase (a phase starts at a printed line and lasts until the next one; the ten
highest kinds, a progress bar's updates counting as one).
"""
from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path


def tree_rss(pid: int) -> dict[int, tuple[float, str]]:
    """RSS in MB and the command line of `pid` and each of its descendants (a process that is gone is left out)."""
    found, todo = {}, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    found[p] = (int(line.split()[1]) / 1024, cmd.strip())
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return found


def main(cmd: list[str]) -> None:
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    samples, lines, parts = [], [(0.0, "(start)")], []

    def sample():
        while proc.poll() is None:
            tree = tree_rss(proc.pid)
            samples.append((time.time() - t0, sum(rss for rss, _ in tree.values())))
            parts.append(tree)
            time.sleep(0.1)

    threading.Thread(target=sample, daemon=True).start()
    for line in proc.stdout:
        for part in line.replace("\r", "\n").splitlines():
            if part.strip():
                lines.append((time.time() - t0, part.strip()[:100]))
    proc.wait()
    at = max(range(len(samples)), key=lambda i: samples[i][1])
    peak_t, peak = samples[at]
    print(f"exit {proc.returncode}; peak RSS {peak:.0f} MB at {peak_t:.1f} s of {time.time() - t0:.1f} s")
    for pid, (rss, cmd) in sorted(parts[at].items(), key=lambda kv: -kv[1][0]):
        print(f"  at the peak: {rss:8.0f} MB  {'main' if pid == proc.pid else 'child'} {pid}  {cmd[:90]}")
    main_peak = max((tree[proc.pid][0] for tree in parts if proc.pid in tree), default=0.0)
    print(f"  the main process alone peaks at {main_peak:.0f} MB")
    phases = []
    for (start, text), (end, _) in zip(lines, lines[1:] + [(float("inf"), "")]):
        inside = [rss for t, rss in samples if start <= t < end]
        if inside:
            phases.append((max(inside), start, text))
    best = {}  # one line per kind of phase: a progress bar's updates are one phase, at their highest
    for rss, start, text in phases:
        untimed = re.sub(r"^\d\d:\d\d:\d\d ", "", text)  # a log line's clock time is not its kind
        kind = re.split(r"[\d|█]", untimed, maxsplit=1)[0].strip(" :%")
        if kind not in best or rss > best[kind][0]:
            best[kind] = (rss, start, text)
    for rss, start, text in sorted(best.values(), reverse=True)[:10]:
        print(f"{rss:8.0f} MB  from {start:7.1f} s  after: {text}")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[args.index("--") + 1:] if "--" in args else args)
