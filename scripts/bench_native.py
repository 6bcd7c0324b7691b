"""The closed form's chunk alone: the compiled kernel (native.py) against the torch passes, alternated.

    OMP_NUM_THREADS=2 python scripts/bench_native.py [--rows 448] [--vocab 49152] [--repeat 5]

Each round makes one chunk's logits with a matmul (as the fused loop does, so torch's threads have just
run), then times `closed_form.chunk_loss_and_grad` (forward KL at T=2 + 0.1 CE) once with the kernel and
once with KDISTILL_NATIVE=0; prints both medians and the median of the rounds' ratios.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from kdistill.losses.fused import closed_form, native
from kdistill.losses.objective import build_objective
from kdistill.losses.signals import DenseSignal


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=448)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    if native.load() is None:
        raise SystemExit("the native kernel is not available here (no C compiler?)")
    objective = build_objective([{"kind": "forward_kl", "temperature": 2.0}, {"kind": "ce", "weight": 0.1}])
    g = torch.Generator().manual_seed(0)
    h, w = torch.randn(args.rows, args.hidden, generator=g), torch.randn(args.vocab, args.hidden, generator=g)
    teacher = DenseSignal(logits=torch.randn(args.rows, args.vocab, generator=g) * 3)
    targets = torch.randint(0, args.vocab, (args.rows,), generator=g)

    def once(flag: str) -> float:
        os.environ["KDISTILL_NATIVE"] = flag
        s = h @ w.T
        logs = {t.name: torch.zeros(()) for t in objective.terms}
        start = time.perf_counter()
        closed_form.chunk_loss_and_grad(objective.terms, True, s, teacher, targets, args.rows, 0.0, logs)
        return time.perf_counter() - start

    once("1"), once("0")  # warm-up
    times = {"1": [], "0": []}
    for r in range(args.repeat):
        for flag in (("1", "0") if r % 2 == 0 else ("0", "1")):
            times[flag].append(once(flag))
    ratio = statistics.median(a / b for a, b in zip(times["1"], times["0"]))
    print(f"chunk {args.rows} x {args.vocab}, torch threads {torch.get_num_threads()}, {args.repeat} rounds")
    print(f"native kernel {statistics.median(times['1']):.4f} s   torch passes "
          f"{statistics.median(times['0']):.4f} s   native/torch {ratio:.3f}")


if __name__ == "__main__":
    main()
