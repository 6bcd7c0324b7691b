"""Single teacher vs two teachers vs an EMA self-teacher on the demo workload, in one run.

    python scripts/bench_teachers.py                    # 20 steps each, batch 8 x 128, 1 thread
    python scripts/bench_teachers.py --steps 40

Three `kdistill distill` runs on the same teacher-written demo data (generated once, cached), the same
student initialisation (8 layers, first_last copy: no calibration passes) and the same steps:
  single   teacher.model=default                                   (SmolLM2-135M-Instruct, fp32)
  two      teacher.sources: the same model in fp32 and in 4-bit NF4 (bitsandbytes), weights 0.5 / 0.5
  ema      teacher.sources: fp32 SmolLM2 (0.8) + an EMA of the student (0.2, update_rate 0.05)
Each final student is then measured on the held-out split against the fp32 teacher, the NF4 teacher and
their 50/50 mixture (KL in nats/token, top-1 agreement). Prints one table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdistill.config.schema import load_config  # noqa: E402
from kdistill.evaluation.heldout import HeldoutEvaluator  # noqa: E402
from kdistill.run.distill import distill  # noqa: E402
from kdistill.sources.model import ModelSource  # noqa: E402
from kdistill.sources.multi import MixtureReference  # noqa: E402

RUNS = {
    "single": [],
    "two": ["teacher.sources=[{name: full, model: default, weight: 0.5}, "
            "{name: nf4, model: default, load_in: 4bit, weight: 0.5}]"],
    "ema": ["teacher.sources=[{name: full, model: default, weight: 0.8}, "
            "{name: ema, kind: ema, update_rate: 0.05, weight: 0.2}]"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default="runs/bench_teachers")
    args = p.parse_args()
    common = ["--config", "configs/demo.yaml"]
    base = [f"train.max_steps={args.steps}", f"train.eval_every={args.steps}", f"train.checkpoint_every={args.steps}",
            "student.layer_selection=first_last", "eval.measure_speed=false", "train.threads=1"]
    results = {}
    for name, extra in RUNS.items():
        t0 = time.time()
        cfg = load_config(common[1], [*base, *extra, f"output_dir={args.out}/{name}"])
        distill(cfg, overwrite=True)
        results[name] = {"seconds": time.time() - t0}
        print(f"== {name}: {results[name]['seconds']:.0f} s", flush=True)
    # every student against the same three references on the same held-out batches
    from transformers import AutoModelForCausalLM

    from kdistill.data import batches as batching
    from kdistill.models.teacher import load_teacher

    cpu = torch.device("cpu")
    full = ModelSource(*load_teacher("default", cpu, torch.float32), "default")
    nf4 = ModelSource(*load_teacher("default", cpu, torch.float32, load_in="4bit"), "default")
    full.against, nf4.against = "full", "nf4"
    cfg = load_config(common[1], base)
    examples = full.load_examples(cfg, cpu)
    _, held = batching.split(examples, cfg.data.heldout_fraction, cfg.train.seed)
    pad = full.tokenizer.pad_token_id
    heldout = [full.collate(held[i:i + 8], pad) for i in range(0, len(held), 8)][:cfg.eval.max_batches]
    refs = [HeldoutEvaluator(r, heldout, cpu) for r in (full, nf4, MixtureReference([full, nf4], [0.5, 0.5]))]
    print(f"\n{'run':8s}{'KL full':>10s}{'KL nf4':>10s}{'KL mix':>10s}{'top-1 full':>12s}{'top-1 nf4':>11s}"
          f"{'time (s)':>10s}")
    for name in RUNS:
        student = AutoModelForCausalLM.from_pretrained(f"{args.out}/{name}/student", dtype=torch.float32).eval()
        m = [ev(student) for ev in refs]
        print(f"{name:8s}{m[0]['kl']:10.3f}{m[1]['kl']:10.3f}{m[2]['kl']:10.3f}{100 * m[0]['top1_agreement']:11.1f}%"
              f"{100 * m[1]['top1_agreement']:10.1f}%{results[name]['seconds']:10.0f}", flush=True)


if __name__ == "__main__":
    main()
