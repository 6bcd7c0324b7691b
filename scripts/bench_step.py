"""Time of one online training step on the demo workload, for this tree and (optionally) another revision.

    python scripts/bench_step.py                          # this tree only
    python scripts/bench_step.py --baseline e2fddb5       # this tree vs that commit, runs alternated

Workload: the embedded teacher (SmolLM2-135M), the demo's default student (8 of 30 layers, first_last
copy so no calibration passes), the demo's loss (forward_kl + 0.1 ce), batch 8 x 128 tokens of random
ids (the step's cost does not depend on the text), AdamW, 1 torch thread. Each measurement is a fresh
process (`--worker`) that times `--steps` steps after 2 warm-up steps; trees alternate A B B A ... for
`--rounds` rounds so both see the same machine load. Prints the median step time of each tree and their ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(tree: str, steps: int) -> dict:
    sys.path.insert(0, tree)
    import torch

    import kdistill
    assert Path(kdistill.__file__).resolve().is_relative_to(Path(tree).resolve()), kdistill.__file__

    torch.set_num_threads(1)
    from kdistill.config.schema import load_config
    from kdistill.losses import build_objective
    from kdistill.models.teacher import load_teacher
    from kdistill.students import build_student
    from kdistill.train.schedule import make_optimizer

    cpu = torch.device("cpu")
    cfg = load_config(None, ["student.layer_selection=first_last", "student.num_layers=8"])
    teacher, tokenizer, folder = load_teacher("default", cpu, torch.float32)
    vocab = teacher.get_input_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(tokenizer), (64, 129), generator=gen)
    batches = [{"input_ids": ids[i:i + 8, :-1], "attention_mask": torch.ones(8, 128, dtype=torch.long),
                "targets": ids[i:i + 8, 1:], "mask": torch.ones(8, 128, dtype=torch.bool)} for i in range(0, 64, 8)]
    torch.manual_seed(0)
    student, _ = build_student(cfg, teacher, vocab, batches[0], tokenizer)
    teacher_arg = teacher
    if (Path(tree) / "kdistill" / "sources").is_dir():  # this tree: the teacher is a source
        from kdistill.sources.model import ModelSource

        teacher_arg = ModelSource(teacher, tokenizer, folder, "default")
    objective = build_objective(cfg.loss.terms, key="loss")
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg.train)
    student.train()
    if (Path(tree) / "kdistill" / "train" / "step.py").is_file():  # this tree: one call is the optimizer step
        from kdistill.train.step import StudentLoss, train_step

        model = StudentLoss(student, objective)

        def step(batch):
            train_step(model, teacher_arg, optimizer, [batch], cpu, 0.0, 1.0)
    else:  # an older tree: forward and backward there, clip and step here
        from kdistill.train.loop import train_step as backward

        def step(batch):
            backward(student, teacher_arg, objective, [batch], cpu, 0.0)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    times, cpu_times = [], []
    for i in range(steps + 2):
        t0, c0 = time.perf_counter(), time.process_time()
        step(batches[i % len(batches)])
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    return {"step_s": times[2:], "cpu_s": cpu_times[2:]}


def measure(tree: str, steps: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, __file__, "--worker", tree, "--steps", str(steps)], env=env,
                         capture_output=True, text=True, check=True, cwd=tree)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", help="a git revision to compare with (checked out in a temporary worktree)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--worker", metavar="TREE", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps)))
        return
    print("uptime:", os.getloadavg(), flush=True)
    trees = {"this tree": str(ROOT)}
    tmp = None
    if args.baseline:
        tmp = tempfile.mkdtemp(prefix="kdistill-baseline-")
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", tmp, args.baseline], check=True,
                       capture_output=True)
        trees = {args.baseline: tmp, **trees}
    results = {name: [] for name in trees}
    cpu = {name: [] for name in trees}
    try:
        for r in range(args.rounds):
            order = list(trees.items()) if r % 2 == 0 else list(trees.items())[::-1]  # ABBA: no order bias
            for name, tree in order:
                got = measure(tree, args.steps)
                results[name] += got["step_s"]
                cpu[name] += got["cpu_s"]
                print(f"round {r + 1} {name}: median {statistics.median(got['step_s']):.3f} s/step, "
                      f"{statistics.median(got['cpu_s']):.3f} CPU-s/step", flush=True)
    finally:
        if tmp:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", tmp], check=False)
    print(f"{'tree':16s}{'median s/step':>16s}{'CPU-s/step':>12s}{'tokens/s':>12s}{'steps':>8s}")
    for name, times in results.items():
        med = statistics.median(times)
        print(f"{name:16s}{med:16.3f}{statistics.median(cpu[name]):12.3f}{8 * 128 / med:12.0f}{len(times):8d}")
    if args.baseline:
        ratio = statistics.median(results["this tree"]) / statistics.median(results[args.baseline])
        cpu_ratio = statistics.median(cpu["this tree"]) / statistics.median(cpu[args.baseline])
        print(f"this tree / {args.baseline}: {ratio:.3f} wall, {cpu_ratio:.3f} CPU (below 1 = faster)")


if __name__ == "__main__":
    main()
