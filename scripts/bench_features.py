"""Hidden-state and attention transfer on the demo workload: held-out KL, step time and memory per term.

    python scripts/bench_features.py                     # 40 steps per run (the demo's), table at the end
    python scripts/bench_features.py --steps 10          # quicker
    python scripts/bench_features.py --targets           # massive activations: residual vs normed targets
    python scripts/bench_features.py --steps 20 --feature-weight 0.5 --objectives logits +hidden+attention

Workload: configs/demo.yaml (the embedded SmolLM2-135M teacher, its teacher-written data, batch 8 x 128,
AdamW at the demo's LR) with two students, each trained from the same start for the same steps:
- layer-dropped: the demo's student, 8 of the 30 teacher layers (chosen by importance once, then explicit);
- pruned: the same 8 layers cut to width 384 (6 heads, 3 KV groups, FFN 1024; Minitron, `prune.py`).
and three objectives: logits (the demo's forward_kl + 0.1 ce), + hidden (hidden_mse, pairs from_init,
normed target), + hidden + attention (also attention_output and attention_map on the same pairs).
Each run is a fresh process (`--worker`), 1 torch thread; it reports held-out KL to the teacher after
training, the median step time (steps 2.. of the run) and the median per-step peak memory: RSS sampled
every 2 ms during the step above the RSS at its start (freed heap returned first with malloc_trim), i.e.
the step's activations, logits chunks and gradients, not the models or the optimizer state.
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
LOGITS = [{"kind": "forward_kl", "weight": 1.0, "temperature": 1.0}, {"kind": "ce", "weight": 0.1}]
HIDDEN = [{"kind": "hidden_mse", "weight": 1.0, "pairs": "from_init", "target": "normed"}]
ATTENTION = [{"kind": "attention_output", "weight": 1.0, "pairs": "from_init"},
             {"kind": "attention_map", "weight": 1.0, "pairs": "from_init", "rows": 16}]
OBJECTIVES = {"logits": LOGITS, "+hidden": LOGITS + HIDDEN, "+hidden+attention": LOGITS + HIDDEN + ATTENTION}
STUDENTS = {"layer-dropped": [], "pruned": ["student.hidden_size=384", "student.num_heads=6",
                                            "student.num_kv_heads=3", "student.intermediate_size=1024"]}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class StepPeak:
    """Peak RSS above the start of a `with` block, sampled every 2 ms in a thread (MB)."""

    def __enter__(self):
        import ctypes
        import threading

        ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.start, self.peak, self.done = rss_mb(), 0.0, False

        def sample():
            while not self.done:
                self.peak = max(self.peak, rss_mb() - self.start)
                time.sleep(0.002)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done = True
        self.thread.join()


def setup(student_args: list[str], layers: list[int] | None, terms: list[dict]):
    import torch

    from kdistill.config.schema import load_config
    from kdistill.data import batches as B
    from kdistill.sources.model import ModelSource

    torch.set_num_threads(1)
    chosen = ["student.layer_selection=explicit", f"student.layers={layers}"] if layers else []
    cfg = load_config(ROOT / "configs" / "demo.yaml", ["student.num_layers=8", *student_args, *chosen,
                                                       f"loss.terms={json.dumps(terms)}"])
    cpu = torch.device("cpu")
    source = ModelSource.load(cfg, cpu, torch.float32)
    train, held = B.split(source.load_examples(cfg, cpu), cfg.data.heldout_fraction, cfg.train.seed)
    pad = source.tokenizer.pad_token_id
    heldout = [B.collate(held[i:i + 8], pad) for i in range(0, len(held), 8)][:cfg.eval.max_batches]
    return cfg, source, train, heldout, pad


def scaled(terms: list[dict], weight: float) -> list[dict]:
    """The objective's terms with every feature term's weight multiplied by `weight` (logit terms as they are)."""
    return [{**t, "weight": t["weight"] * weight} if t not in LOGITS else t for t in terms]


def worker(student_args: list[str], layers: list[int] | None, objective: str, steps: int,
           feature_weight: float = 1.0) -> dict:
    import torch

    from kdistill.data import batches as B
    from kdistill.evaluation.heldout import HeldoutEvaluator
    from kdistill.losses import build_objective
    from kdistill.students import build_student
    from kdistill.train.features import plan
    from kdistill.train.schedule import make_optimizer, warmup_cosine
    from kdistill.train.step import StudentLoss, accumulate_gradients

    cfg, source, train, heldout, pad = setup(student_args, layers, scaled(OBJECTIVES[objective], feature_weight))
    calib = B.collate(train[:4], pad)
    torch.manual_seed(0)
    student, report = build_student(cfg, source.model, source.vocab_size, calib, source.tokenizer)
    objective_ = build_objective(cfg.loss.terms)
    features = plan(objective_, student, source.model, report, calib)
    evaluator = HeldoutEvaluator(source, heldout, torch.device("cpu"))
    params = [p for p in student.parameters() if p.requires_grad] + list(features.parameters() if features else [])
    optimizer = make_optimizer(params, cfg.train)
    scheduler = warmup_cosine(optimizer, cfg.train.warmup_steps, steps, cfg.train.min_lr_ratio)
    stream = B.BatchStream(train, cfg.train.batch_size, cfg.train.seed, pad)
    model = StudentLoss(student, objective_, features)
    student.train()
    times, peaks = [], []
    for step in range(steps):
        t0 = time.perf_counter()
        with StepPeak() as peak:
            row = accumulate_gradients(model, source, [stream.next()], torch.device("cpu"), step / steps)
        torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        times.append(time.perf_counter() - t0)
        peaks.append(peak.peak)
    kl = evaluator(student.eval())["kl"]
    return {"layers": report.get("layers"), "kl": kl, "step_s": statistics.median(times[1:] or times),
            "step_peak_mb": statistics.median(peaks[1:] or peaks), "last_loss": row["loss"],
            "terms": {k: v for k, v in row.items() if k not in ("loss", "tokens")}}


def targets() -> None:
    """Share of each layer's squared activation in its two largest channels, residual vs normed (SmolLM2)."""
    import torch

    from kdistill.data import batches as B
    from kdistill.models.activations import capture

    cfg, source, train, _, pad = setup([], None, LOGITS)
    batch = B.collate(train[:8], pad)
    n = source.model.config.num_hidden_layers
    with torch.no_grad(), capture(source.model, {i: ("residual", "normed") for i in range(n)}) as found:
        source.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    keep = batch["attention_mask"].bool()
    print("layer  top-2 channels' share of sum(x^2): residual  normed   max|x| residual  normed")
    for i in range(n):
        row = []
        for name in ("residual", "normed"):
            x = found[i][name][keep].float()
            energy = x.pow(2).sum(0)
            row += [float(energy.topk(2).values.sum() / energy.sum()), float(x.abs().max())]
        print(f"{i:>5}  {row[0]:>38.3f}  {row[2]:>6.3f}   {row[1]:>14.1f}  {row[3]:>6.1f}")


def table(results: dict) -> str:
    lines = ["| student | objective | held-out KL | s/step | step peak MB |", "|---|---|---|---|---|"]
    for (student, objective), r in results.items():
        lines.append(f"| {student} | {objective} | {r['kl']:.3f} | {r['step_s']:.2f} | {r['step_peak_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--targets", action="store_true", help="print the residual vs normed measurement and stop")
    p.add_argument("--feature-weight", type=float, default=1.0, help="multiplies every feature term's weight")
    p.add_argument("--objectives", nargs="+", choices=list(OBJECTIVES), default=list(OBJECTIVES))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.targets:
        return targets()
    if args.worker:
        job = json.loads(args.worker)
        print(json.dumps(worker(job["student"], job["layers"], job["objective"], args.steps, job["feature_weight"])))
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    results, layers = {}, None
    for student, student_args in STUDENTS.items():
        for objective in args.objectives:
            job = json.dumps({"student": student_args, "layers": layers, "objective": objective,
                              "feature_weight": args.feature_weight})
            out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--worker", job], env=env,
                                 capture_output=True, text=True, check=True, cwd=tempfile.gettempdir())
            r = json.loads(out.stdout.strip().splitlines()[-1])
            layers = layers or r["layers"]  # importance is measured once; every run starts from those layers
            results[(student, objective)] = r
            print(f"{student:>13} {objective:>18}: KL {r['kl']:.3f}, {r['step_s']:.2f} s/step, "
                  f"step peak {r['step_peak_mb']:.0f} MB, terms {r['terms']}", flush=True)
    print(f"\n{args.steps} steps each, feature weight x{args.feature_weight:g}, layers {layers}\n" + table(results))


if __name__ == "__main__":
    main()
