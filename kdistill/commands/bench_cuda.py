"""The fused loss on a GPU at Liger-Kernel's published shape, beside Liger's own kernel where it imports.

    python -m kdistill.commands.bench_cuda                    # 8192 tokens x 4096 -> 128,256, bf16, JSD
    python -m kdistill.commands.bench_cuda --device cpu --tokens 64 --hidden 32 --vocab 1000 --repeat 2

Every method runs forward + backward of generalised JSD (β 0.5, T 1) from the student's hidden states and
output layer and the teacher's, all in --dtype: `ours` (kdistill's chunked objective, logits never built
whole), `plain` (full logits in float32, `divergences.jsd`, autograd: the reference), `liger`
(`LigerFusedLinearJSD`, if `liger_kernel` imports). First every method is checked against `plain` (loss
and both gradients, relative error); then one warm-up run each and --repeat rounds, the methods
alternated. Prints the median milliseconds and the peak memory allocated by torch during a run
(`torch.cuda.max_memory_allocated`, inputs included; on the CPU: not measured).
Shapes: hidden (N, D), weight (V, D), teacher hidden (N, D), teacher weight (V, D).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from kdistill.commands.bench_loss import make_inputs
from kdistill.losses.divergences import jsd
from kdistill.losses.objective import build_objective
from kdistill.losses.signals import DenseSignal

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def run_ours(x: dict, beta: float = 0.5, temperature: float = 1.0, budget_mb: float = 1024.0) -> torch.Tensor:
    """kdistill's chunked objective, forward + backward; returns the loss (mean over tokens)."""
    n = x["hidden"].shape[0]
    objective = build_objective([{"kind": "jsd", "beta": beta, "temperature": temperature}], t2_scale=False,
                                memory_budget_mb=budget_mb)
    device = x["hidden"].device
    out = objective(x["hidden"][None], x["weight"], DenseSignal.from_hidden(x["teacher_hidden"][None], x["teacher_weight"]),
                    torch.zeros(1, n, dtype=torch.long, device=device), torch.ones(1, n, dtype=torch.bool, device=device), n)
    out.loss.backward()
    return out.loss.detach().float()


def run_plain(x: dict, beta: float = 0.5, temperature: float = 1.0) -> torch.Tensor:
    """The reference: full logits in float32, generalised JSD per token, mean, autograd."""
    student = (x["hidden"] @ x["weight"].T).float()
    with torch.no_grad():
        teacher = (x["teacher_hidden"] @ x["teacher_weight"].T).float()
    loss = jsd(student, teacher, temperature, beta).mean()
    loss.backward()
    return loss.detach()


def liger_runner():
    """Liger's fused linear JSD as a runner, or None where liger_kernel does not import."""
    try:
        from liger_kernel.transformers import LigerFusedLinearJSD
    except Exception:  # not installed, or no triton / no GPU it supports
        return None

    def run_liger(x: dict, beta: float = 0.5, temperature: float = 1.0) -> torch.Tensor:
        # Liger's β weighs the same mixture as ours at 0.5 (the benchmark's value), the symmetric JSD
        loss = LigerFusedLinearJSD(jsd_beta=beta, temperature=temperature)(
            x["hidden"], x["weight"], x["teacher_hidden"], x["teacher_weight"])
        loss.backward()
        return loss.detach().float()
    return run_liger


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, x: dict) -> tuple[float, float | None]:
    """(milliseconds, peak GB allocated or None on the CPU) of one forward + backward."""
    device = x["hidden"].device
    x["hidden"].grad = x["weight"].grad = None
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    fn(x)
    _sync(device)
    ms = (time.perf_counter() - start) * 1e3
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    return ms, peak


def agreement(methods: dict, x: dict) -> dict[str, dict[str, float]]:
    """{method: relative error of its loss and gradients against `plain`}."""
    out, ref = {}, None
    for name in ["plain"] + [m for m in methods if m != "plain"]:
        x["hidden"].grad = x["weight"].grad = None
        loss = methods[name](x)
        got = (loss.float(), x["hidden"].grad.float().clone(), x["weight"].grad.float().clone())
        if ref is None:
            ref = got
            continue
        out[name] = {k: float((a - b).norm() / b.norm().clamp_min(1e-30))
                     for k, a, b in zip(("loss", "grad_hidden", "grad_weight"), got, ref)}
    x["hidden"].grad = x["weight"].grad = None
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    p.add_argument("--device", default="cuda")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--budget-mb", type=float, default=1024.0, help="ours: memory budget of a chunk's logits")
    p.add_argument("--skip-plain", action="store_true", help="time without the full-logit reference")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here (use --device cpu with a small shape to try the script)")
    x = make_inputs(args.tokens, args.hidden, args.vocab, DTYPES[args.dtype], device)
    methods = {"ours": lambda x: run_ours(x, budget_mb=args.budget_mb), "plain": run_plain}
    liger = liger_runner() if device.type == "cuda" else None
    if liger is not None:
        methods["liger"] = liger
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}: {args.tokens} tokens x {args.hidden} -> {args.vocab}, {args.dtype}, JSD beta 0.5, "
          f"forward + backward; liger_kernel {'found' if liger else 'not found'}")
    for m, err in agreement(methods, x).items():
        print(f"{m} against plain (relative error): " + ", ".join(f"{k} {v:.2e}" for k, v in err.items()))
    if args.skip_plain:
        methods.pop("plain")
    times, peaks = {m: [] for m in methods}, {m: 0.0 for m in methods}
    for m in methods:
        measure(methods[m], x)  # warm-up
    order = list(methods)
    for r in range(args.repeat):
        for m in order[r % len(order):] + order[:r % len(order)]:
            ms, peak = measure(methods[m], x)
            times[m].append(ms)
            peaks[m] = max(peaks[m], peak or 0.0)
    for m in methods:
        mem = f"peak {peaks[m]:.2f} GB" if device.type == "cuda" else "peak memory not measured on the CPU"
        print(f"{m:6s} median {statistics.median(times[m]):9.1f} ms over {args.repeat}   {mem}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
