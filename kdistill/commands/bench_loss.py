"""`kdistill bench loss`: time and peak memory of the seed-style KD loss against ours, forward + backward.

    kdistill bench loss --tokens 4096 --vocab 49152 --hidden 576
    python -m kdistill.commands.bench_loss --tokens 512 --vocab 8192 --hidden 128 --divergence jsd

Reference (what the seeds write): full student logits hidden @ W.T and full teacher logits, then
F.kl_div(log_softmax(s / T), softmax(t / T), reduction="batchmean"), backward. Ours: `build_objective`
with the chosen divergence (t2_scale off), the student's logits and (with --teacher hidden, the default)
the teacher's logits computed one chunk of rows at a time; with --teacher logits the teacher's full
logits are an input of both methods and not counted.

How memory is measured: each method runs in a fresh Python process that builds its inputs, resets the
kernel's peak-RSS mark (writing 5 to /proc/self/clear_refs; Linux >= 4.0), runs forward + backward once
and reads VmHWM from /proc/self/status. "Peak extra" = VmHWM - RSS before the run: every byte the method
touched on top of its inputs (logits, temporaries, gradients), whoever allocated it. torch keeps no CPU
allocator statistics and tracemalloc does not see torch. Without clear_refs, ru_maxrss is used (an
upper bound). Time: one further process runs every method once to warm up, then --repeat rounds of all
of them, alternated (the order rotated each round); each method's median, and each ratio as the median
of the rounds' ratios, so a busier phase of a shared machine weighs on both sides of a ratio. The floor is the same output-layer
matmuls with nothing else (teacher head, student head forward, its backward to hidden and weight): what no
loss can beat; ours/floor says how much the divergence and the chunking cost on top.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kdistill.commands.args import bench_loss_arguments
from kdistill.losses.fused import closed_form, native
from kdistill.losses.objective import build_objective
from kdistill.losses.signals import DenseSignal

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


add_arguments = bench_loss_arguments  # defined without torch, so `kdistill bench loss --help` is quick


def make_inputs(n: int, d: int, v: int, dtype: torch.dtype, device="cpu", seed: int = 0) -> dict:
    """Student hidden (N, D) and head (V, D), both requiring grad; the teacher's hidden (N, D) and head (V, D)."""
    g = torch.Generator().manual_seed(seed)
    x = {"hidden": torch.randn(n, d, generator=g), "weight": torch.randn(v, d, generator=g) / d ** 0.5,
         "teacher_hidden": torch.randn(n, d, generator=g), "teacher_weight": torch.randn(v, d, generator=g) * 2 / d ** 0.5}
    x = {k: t.to(device=device, dtype=dtype) for k, t in x.items()}
    x["hidden"].requires_grad_()
    x["weight"].requires_grad_()
    return x


def _inputs(args) -> dict:
    x = make_inputs(args.tokens, args.hidden, args.vocab, DTYPES[args.dtype], seed=args.seed)
    if args.teacher == "logits":
        with torch.no_grad():
            x["teacher_logits"] = x["teacher_hidden"] @ x["teacher_weight"].T
    return x


def run_reference(x: dict, args) -> torch.Tensor:
    """The seeds' loss on full logits, forward + backward; returns the loss."""
    student = x["hidden"] @ x["weight"].T
    if "teacher_logits" in x:
        teacher = x["teacher_logits"]
    else:
        with torch.no_grad():
            teacher = x["teacher_hidden"] @ x["teacher_weight"].T
    t = args.temperature
    loss = F.kl_div(F.log_softmax(student.float() / t, -1), F.softmax(teacher.float() / t, -1),
                    reduction="batchmean")
    loss.backward()
    return loss.detach()


def _objective(args):
    return build_objective([{"kind": args.divergence, "temperature": args.temperature}], t2_scale=False,
                           chunk_size=args.chunk_size, memory_budget_mb=args.memory_budget_mb)


def run_ours(x: dict, args, closed_form: bool = True) -> torch.Tensor:
    """Our chunked objective, forward + backward; returns the loss. `closed_form=False`: the chunk
    gradients by autograd even where the closed form applies (forward KL, CE)."""
    if "teacher_logits" in x:
        teacher = DenseSignal(logits=x["teacher_logits"][None])
    else:
        teacher = DenseSignal.from_hidden(x["teacher_hidden"][None], x["teacher_weight"])
    n = x["hidden"].shape[0]
    mask = torch.ones(1, n, dtype=torch.bool)
    targets = torch.zeros(1, n, dtype=torch.long)
    objective = _objective(args)
    objective.use_closed_form = closed_form
    out = objective(x["hidden"][None], x["weight"], teacher, targets, mask, n)
    out.loss.backward()
    return out.loss.detach()


def run_floor(x: dict, args) -> torch.Tensor:
    """The floor: the same projections as plain matmuls and nothing else — the teacher's output layer
    (with --teacher hidden), the student's forward, and its backward to hidden and weight."""
    if "teacher_hidden" in x:
        with torch.no_grad():
            x["teacher_hidden"] @ x["teacher_weight"].T
    logits = x["hidden"] @ x["weight"].T
    logits.backward(torch.ones_like(logits))
    return torch.zeros(())


def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


METHODS = ("reference", "ours", "torch_passes", "autograd", "floor")


def _runner(method: str):
    """The function that runs `method` once on the inputs; "torch_passes" is ours with the closed form's
    torch passes instead of its compiled kernel (native.py), as where no C compiler is."""
    def torch_passes(x, args):
        before = os.environ.get("KDISTILL_NATIVE")
        os.environ["KDISTILL_NATIVE"] = "0"
        try:
            return run_ours(x, args)
        finally:
            if before is None:
                os.environ.pop("KDISTILL_NATIVE")
            else:
                os.environ["KDISTILL_NATIVE"] = before

    return {"reference": run_reference, "ours": run_ours, "floor": run_floor, "torch_passes": torch_passes,
            "autograd": lambda x, a: run_ours(x, a, closed_form=False)}[method]


def worker(method: str, args) -> dict:
    """Measure one method's peak memory in this (fresh) process; returns peak extra MiB and the loss."""
    x = _inputs(args)
    run = _runner(method)
    before = _rss_kib("VmRSS") or 0
    exact = _reset_peak()
    loss = run(x, args)
    peak = _rss_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_extra_mib": (peak - before) / 1024, "loss": float(loss),
            "method": "VmHWM after clear_refs" if exact else "ru_maxrss (upper bound)"}


def timing_worker(args) -> dict:
    """Time every method in one process, alternated: one warm-up run each, then --repeat rounds, each
    running every method once in an order rotated by one per round, so a slower phase of a shared
    machine falls on all methods alike. Returns each method's run times, in round order."""
    x = _inputs(args)
    runs = {m: _runner(m) for m in METHODS}
    times = {m: [] for m in METHODS}
    for method, run in runs.items():
        x["hidden"].grad = x["weight"].grad = None
        run(x, args)
    for r in range(args.repeat):
        for method in METHODS[r % len(METHODS):] + METHODS[:r % len(METHODS)]:
            x["hidden"].grad = x["weight"].grad = None
            start = time.perf_counter()
            runs[method](x, args)
            times[method].append(time.perf_counter() - start)
    return times


def _spawn(method: str, argv: list[str]) -> dict:
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "kdistill.commands.bench_loss", "--worker", method, *argv],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"bench worker {method!r} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _argv(args) -> list[str]:
    argv = ["--tokens", args.tokens, "--vocab", args.vocab, "--hidden", args.hidden, "--divergence",
            args.divergence, "--temperature", args.temperature, "--memory-budget-mb", args.memory_budget_mb,
            "--dtype", args.dtype, "--teacher", args.teacher, "--repeat", args.repeat, "--seed", args.seed]
    if args.chunk_size is not None:
        argv += ["--chunk-size", args.chunk_size]
    return [str(a) for a in argv]


def main(args) -> int:
    """Run both methods, each in a fresh process, and print time, peak extra memory and their ratios."""
    objective = _objective(args)
    closed = closed_form.eligible(objective.terms, DenseSignal(logits=torch.zeros(1, 1, 1)), {})
    chunk = objective.chunk_size_for(args.vocab, closed=closed)
    teacher = "hidden + head, logits chunked too" if args.teacher == "hidden" else "full logits (an input)"
    print(f"kdistill bench loss: tokens={args.tokens} vocab={args.vocab} hidden={args.hidden} "
          f"divergence={args.divergence} T={args.temperature} dtype={args.dtype} torch threads="
          f"{torch.get_num_threads()}")
    print(f"ours: chunked fused output layer, {chunk} rows/chunk "
          f"({'given' if args.chunk_size else f'auto, budget {args.memory_budget_mb:g} MiB'}); teacher: {teacher}")
    print("reference: full logits, F.kl_div(log_softmax(s/T), softmax(t/T), reduction='batchmean')")
    print(f"autograd: ours with every chunk's gradient by autograd (what terms without a closed form take), "
          f"{objective.chunk_size_for(args.vocab)} rows/chunk")
    print("floor: the same projections (teacher head, student head forward and backward) as plain matmuls")
    print("torch_passes: ours with the closed form's torch passes instead of its compiled kernel "
          f"({'built' if native.load() is not None else 'NOT available here: ours is torch_passes'})")
    results = {m: _spawn(m, _argv(args)) for m in METHODS}
    times = _spawn("timing", _argv(args))
    print(f"memory: {results['ours']['method']}, peak RSS growth over the inputs, one process per method; "
          f"time: median of {args.repeat} rounds in one process, the methods alternated")
    print(f"{'method':<13} {'time_s':>9} {'peak_extra_MiB':>15} {'loss':>12}")
    for name, r in results.items():
        r["median"] = statistics.median(times[name]) if times[name] else float("nan")
        print(f"{name:<13} {r['median']:>9.3f} {r['peak_extra_mib']:>15.1f} {r['loss']:>12.6f}")

    def ratio(a: str, b: str) -> float:  # median over rounds of the round's a / b
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    ref, ours = results["reference"], results["ours"]
    print(f"ratio ours/reference: time {ratio('ours', 'reference'):.3f}  "
          f"peak memory {ours['peak_extra_mib'] / max(ref['peak_extra_mib'], 1e-9):.3f}")
    print(f"ratio ours/floor: time {ratio('ours', 'floor'):.3f}   ours/torch_passes: time "
          f"{ratio('ours', 'torch_passes'):.3f}   (medians of the rounds' ratios)")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--worker", choices=[*METHODS, "timing"], help=argparse.SUPPRESS)
    cli_args = parser.parse_args()
    if cli_args.worker:
        result = timing_worker(cli_args) if cli_args.worker == "timing" else worker(cli_args.worker, cli_args)
        print(json.dumps(result))
        sys.exit(0)
    sys.exit(main(cli_args))
