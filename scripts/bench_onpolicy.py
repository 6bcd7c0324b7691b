"""On-policy distillation on the demo workload: step cost, then quality at equal wall-clock.

    python scripts/bench_onpolicy.py                        # 3 timed steps per mode, 300 s per run
    python scripts/bench_onpolicy.py --steps 5 --budget 600 --threads 2

Workload: the embedded teacher (`teacher.model=default`, SmolLM2-135M-Instruct), the demo's default
student (8 of 30 layers, first_last copy so no calibration passes), its teacher-generated data
(cached under $KDISTILL_CACHE after the first run), batch 8 x 128, `rollout.max_new_tokens=64`.

1. Speed: s/step and loss tokens/s of an off-policy step (forward_kl + 0.1 ce on the data), of
   lmbda=0.5 and of lmbda=1 steps (the student writes 64 tokens after a 32-token prompt, then the same
   loss on them); the ratio to the off-policy step (goal: lmbda=1 <= 2.5x).
2. Quality: from the same initial student, an off-policy run and an on-policy run (lmbda=1, jsd) each
   train for `--budget` seconds; then held-out KL (teacher-forced, against the teacher) and the exposure
   metrics of `kdistill.evaluation.exposure` (teacher NLL of the student's samples, lower is better).
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = {"off-policy": {"rollout.source": "data"},
         "lmbda=0.5": {"rollout.source": "student", "rollout.lmbda": 0.5},
         "lmbda=1": {"rollout.source": "student", "rollout.lmbda": 1.0}}


TEACHER = "default"


def _config(overrides: dict, threads: int, terms: str | None = None):
    from kdistill.config.schema import load_config

    base = [f"teacher.model={TEACHER}", "student.layer_selection=first_last", "train.batch_size=8",
            "train.seq_len=128", f"train.threads={threads}", "rollout.max_new_tokens=64",
            "rollout.prompt_tokens=32", "output_dir=/tmp/bench_onpolicy"]
    extra = [f"{k}={v}" for k, v in overrides.items()] + ([f"loss.terms={terms}"] if terms else [])
    return load_config(None, base + extra)


def _setup(threads: int):
    from kdistill.run import distill as D

    cfg = _config({}, threads)
    device, dtype = D.setup(cfg)
    source = D.open_teacher(cfg, device, dtype)
    data = D.load_data(cfg, source, device)
    student, _ = D.make_student(cfg, source, data, device)
    return device, source, data, student


def _trainer(cfg, student, source, data, device):
    """(one optimizer step -> its loss tokens) for this config's stream and loss."""
    from kdistill.data import batches as batching
    from kdistill.data import rollout
    from kdistill.losses import build_objective
    from kdistill.train.schedule import make_optimizer
    from kdistill.train.step import StudentLoss, train_step

    objective = build_objective(cfg.loss.terms, key="loss")
    stream = batching.BatchStream(data.train, cfg.train.batch_size, cfg.train.seed, data.pad_id)
    stream = rollout.build_stream(cfg, stream, student, source, device)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg.train)
    student.train()

    def step(progress: float = 0.0) -> int:
        row = train_step(StudentLoss(student, objective), source, optimizer, [stream.next()], device, progress,
                         cfg.train.grad_clip)
        return row["tokens"]

    return step


def speed(init, source, data, device, steps: int, threads: int) -> dict:
    out = {}
    for name, overrides in MODES.items():
        cfg = _config(overrides, threads)
        step = _trainer(cfg, copy.deepcopy(init), source, data, device)
        step()  # warm-up
        times, tokens = [], []
        for _ in range(steps):
            t0 = time.perf_counter()
            tokens.append(step())
            times.append(time.perf_counter() - t0)
        out[name] = {"s_per_step": statistics.median(times), "mean_s": statistics.mean(times),
                     "tokens_per_s": sum(tokens) / sum(times)}
        print(f"{name:12s} median {out[name]['s_per_step']:.2f} s/step, mean {out[name]['mean_s']:.2f}, "
              f"{out[name]['tokens_per_s']:.0f} loss tokens/s", flush=True)
    return out


def quality(init, source, data, device, budget: float, threads: int) -> dict:
    from kdistill.evaluation.exposure import exposure_metrics
    from kdistill.evaluation.heldout import HeldoutEvaluator

    runs = {"off-policy": ({"rollout.source": "data"}, None),
            "on-policy lmbda=1 jsd": ({"rollout.source": "student", "rollout.lmbda": 1.0}, "[{kind: jsd}]")}
    evaluator = HeldoutEvaluator(source, data.heldout, device)
    out = {}
    for name, (overrides, terms) in runs.items():
        cfg = _config(overrides, threads, terms)
        student = copy.deepcopy(init)
        step = _trainer(cfg, student, source, data, device)
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < budget:
            step()
            n += 1
        student.eval()
        held = evaluator(student)
        exp = exposure_metrics(student, source.model, data.heldout[:2], source.tokenizer, device, 64, 32, 128, 0)
        out[name] = {"steps": n, "heldout_kl": held["kl"], **exp}
        print(f"{name:24s} {n} steps in {budget:.0f} s: held-out KL {held['kl']:.3f}, teacher NLL of student "
              f"samples {exp['teacher_nll_of_student_samples']:.3f}, student NLL of teacher samples "
              f"{exp['student_nll_of_teacher_samples']:.3f}", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3, help="timed steps per mode (after one warm-up)")
    p.add_argument("--budget", type=float, default=300.0, help="seconds of training per quality run (0: skip)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--teacher", default="default", help="another teacher (a tiny one for a smoke test)")
    args = p.parse_args()
    global TEACHER
    TEACHER = args.teacher
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print("load average:", os.getloadavg(), flush=True)
    device, source, data, init = _setup(args.threads)
    result = speed(init, source, data, device, args.steps, args.threads)
    base = result["off-policy"]["s_per_step"]
    for name, r in result.items():
        print(f"{name:12s} {r['s_per_step'] / base:.2f}x an off-policy step")
    if args.budget > 0:
        quality(init, source, data, device, args.budget, args.threads)


if __name__ == "__main__":
    main()
