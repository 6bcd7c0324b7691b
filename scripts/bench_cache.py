"""Offline (teacher cache) vs online distillation on the default demo workload, in one run.

    python scripts/bench_cache.py                      # 20 steps each, batch 8, seq_len 128
    python scripts/bench_cache.py --steps 150 --set student.layer_selection=importance

1. Loads the embedded teacher (teacher.model=default) and the demo data (teacher-generated, reused from
   $KDISTILL_CACHE when it exists), as `kdistill distill --config configs/demo.yaml` does.
2. Writes the teacher cache (top-k, k=50; `kdistill cache`), prints bytes/token, and on the held-out
   split, against the real teacher: the captured mass and KL(teacher ‖ reconstructed), both on the stored
   support (top-k + rest bucket: what the loss sees) and over the full vocabulary (rest spread evenly).
3. Builds one initial student and trains two copies for the same steps, seed and batches, alternating
   steps so that both see the same machine load: online (a teacher forward pass every step, dense signal)
   and from the cache (decoded sparse signal, no teacher). Same student, optimizer and loss terms (the
   demo's: forward_kl + 0.1 ce, with missing_mass=residual unless --missing-mass renormalize);
   only the teacher signal's type differs. Tokens/s count steps 2..N (step 1 of each warms up).
4. Prints tokens/s of each, the ratio, and each student's held-out KL against the real teacher.

Smaller than the demo (say so when quoting): --steps (default 20, demo 150) and layer_selection=first_last
(the demo's importance selection costs minutes of teacher passes; both students start from the same copy).
Tokens/s are wall-clock; the CPU-time ratio is printed too (it is steadier on a shared machine).
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdistill.base import fsutil
from kdistill.base.hardware import pick_device, pick_dtype, set_threads  # noqa: E402
from kdistill.cache.reader import open_cache  # noqa: E402
from kdistill.config.schema import load_config  # noqa: E402
from kdistill.data import batches as batching  # noqa: E402
from kdistill.data.load import load_examples  # noqa: E402
from kdistill.evaluation.heldout import heldout_metrics  # noqa: E402
from kdistill.losses import build_objective  # noqa: E402
from kdistill.models.teacher import load_teacher  # noqa: E402
from kdistill.run.cache import write_cache  # noqa: E402
from kdistill.students import build_student  # noqa: E402
from kdistill.train.schedule import make_optimizer, warmup_cosine  # noqa: E402
from kdistill.train.step import StudentLoss, train_step  # noqa: E402

# the demo's default loss terms, with the sparse signal's missing-mass policy stated (dense signals ignore it)
LOSS = "[{{kind: forward_kl, weight: 1.0, temperature: 1.0, missing_mass: {}}}, {{kind: ce, weight: 0.1}}]"


@torch.no_grad()
def reconstruction(teacher, batches: list[dict], device) -> dict:
    """Captured mass and KL(teacher ‖ cached) per held-out token: on the K + 1 stored buckets and over V."""
    sums = {"mass": 0.0, "kl_stored": 0.0, "kl_full": 0.0, "tokens": 0}
    for b in batches:
        logits = teacher(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device)).logits
        for row in range(logits.shape[0]):  # one sequence at a time: (T, V) fp64 temporaries
            mask = b["mask"][row].bool()
            lp = logits[row][mask.to(device)].double().log_softmax(-1).cpu()  # (N, V) exact
            ids, q = b["signal"].ids[row][mask], b["signal"].logprobs[row][mask].double().exp()  # stored (N, K)
            p = lp.gather(-1, ids).exp()
            rest_p, rest_q = (1 - p.sum(-1)).clamp(min=0), (1 - q.sum(-1)).clamp(min=1e-300)
            kl_k = (p * (p.log() - q.log())).sum(-1)
            kl_rest = torch.where(rest_p > 0, rest_p * (rest_p.clamp(min=1e-300).log() - rest_q.log()), 0.0)
            tail = lp.exp().scatter(-1, ids, 0.0)
            share = (rest_q / (lp.shape[-1] - ids.shape[-1])).log()[:, None]
            kl_tail = torch.where(tail > 0, tail * (lp - share), 0.0).sum(-1)
            sums["mass"] += p.sum().item()
            sums["kl_stored"] += (kl_k + kl_rest).sum().item()
            sums["kl_full"] += (kl_k + kl_tail).sum().item()
            sums["tokens"] += int(mask.sum())
    n = max(1, sums["tokens"])
    return {k: v / n for k, v in sums.items() if k != "tokens"} | {"tokens": sums["tokens"]}


class Run:
    """One student's optimizer state and batch stream, stepped the way `run_training` steps."""

    def __init__(self, cfg, student, teacher, stream):
        tc = cfg.train
        self.cfg, self.student, self.teacher, self.stream = cfg, student, teacher, stream
        self.params = [p for p in student.parameters() if p.requires_grad]
        self.opt = make_optimizer(self.params, tc)
        self.sched = warmup_cosine(self.opt, tc.warmup_steps, tc.max_steps, tc.min_lr_ratio)
        self.seconds, self.cpu_seconds, self.tokens, self.step, self.loss = 0.0, 0.0, 0, 0, float("nan")

    def train_one(self, objective, device) -> None:
        self.student.train()
        t0, c0 = time.perf_counter(), time.process_time()
        micro = [self.stream.next() for _ in range(self.cfg.train.grad_accum)]
        row = train_step(StudentLoss(self.student, objective), self.teacher, self.opt, micro, device,
                         self.step / self.cfg.train.max_steps, self.cfg.train.grad_clip)
        self.sched.step()
        self.step += 1
        if self.step > 1:  # step 1 warms up (allocations, first-call overheads)
            self.seconds += time.perf_counter() - t0
            self.cpu_seconds += time.process_time() - c0
            self.tokens += row["tokens"]
        self.loss = row["loss"]

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds else float("nan")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", default="runs/bench_cache", help="folder for the cache and bench.json")
    p.add_argument("--missing-mass", default="residual", choices=["residual", "renormalize"],
                   help="the sparse signal's policy for the mass outside the top-k (the loss config's default "
                        "is renormalize: faster, but the student learns nothing about the tail)")
    p.add_argument("--reuse-cache", action="store_true", help="keep a complete cache of the same settings")
    p.add_argument("--set", nargs="*", default=[], metavar="key.path=value", help="more config overrides")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    out = Path(args.out)
    cfg = load_config("configs/demo.yaml", [
        f"train.max_steps={args.steps}", f"train.batch_size={args.batch_size}", f"cache.out={out / 'cache'}",
        "cache.k=50", "cache.mode=topk", "student.layer_selection=first_last",
        f"loss.terms={LOSS.format(args.missing_mass)}", *args.set])
    threads = set_threads(cfg.train.threads)
    device = pick_device(cfg.train.device)
    t0 = time.time()
    teacher, tokenizer, folder = load_teacher(cfg.teacher.model, device, pick_dtype(cfg.teacher.dtype, device))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    examples = load_examples(cfg, teacher, tokenizer, folder, device)
    print(f"[setup] teacher and {len(examples)} demo examples in {time.time() - t0:.1f}s, {threads} threads, "
          f"{args.steps} steps of batch {cfg.train.batch_size} x seq_len {cfg.train.seq_len}", flush=True)

    t0 = time.time()
    manifest = write_cache(cfg, overwrite=not args.reuse_cache, loaded=(teacher, tokenizer, folder))
    cache = open_cache(cfg.cache.out)
    stats = manifest["stats"]
    print(f"[cache] written in {time.time() - t0:.1f}s: {manifest['data']['positions']:,} positions, "
          f"{stats['bytes_per_token']:.1f} bytes/token (k=50)", flush=True)

    pad = tokenizer.pad_token_id
    train, held = batching.split(examples, cfg.data.heldout_fraction, cfg.train.seed)
    c_train, c_held = batching.split(cache.examples, cfg.data.heldout_fraction, cfg.train.seed)
    plain = batching.heldout_batches(held, cfg.train.batch_size, pad, cfg.eval.max_batches)
    cached_held = [cache.collate_fn(pad)(c_held[i:i + cfg.train.batch_size])
                   for i in range(0, len(c_held), cfg.train.batch_size)][:cfg.eval.max_batches]
    rec = reconstruction(teacher, cached_held, device)
    print(f"[cache] held-out ({rec['tokens']} tokens): captured mass {rec['mass']:.4f}, KL(teacher ‖ reconstructed) "
          f"{rec['kl_stored']:.5f} nats/token on the stored support (top-50 + rest), {rec['kl_full']:.4f} over the "
          "full vocabulary with the rest spread evenly", flush=True)

    torch.manual_seed(cfg.train.seed)
    student, report = build_student(cfg, teacher, teacher.get_input_embeddings().weight.shape[0],
                                    batching.collate(train[:4], pad), tokenizer)
    student.to(device)
    objective = build_objective(cfg.loss.terms, t2_scale=cfg.loss.t2_scale, chunk_size=cfg.loss.chunk_size,
                                memory_budget_mb=cfg.loss.memory_budget_mb)
    logits_cache: list = []
    start_kl = heldout_metrics(student.eval(), teacher, plain, device, logits_cache)["kl"]
    print(f"[train] student {report['parameters']:,} parameters, held-out KL at step 0: {start_kl:.4f}", flush=True)
    runs = {"online": Run(cfg, copy.deepcopy(student), teacher,
                          batching.BatchStream(train, cfg.train.batch_size, cfg.train.seed, pad)),
            "cache": Run(cfg, student, None, batching.BatchStream(c_train, cfg.train.batch_size, cfg.train.seed, pad,
                                                                   collate_fn=cache.collate_fn(pad)))}
    for step in range(args.steps):
        for name in (("online", "cache") if step % 2 == 0 else ("cache", "online")):
            runs[name].train_one(objective, device)
        if (step + 1) % 5 == 0 or step + 1 == args.steps:
            print(f"[train] step {step + 1}/{args.steps}: " + ", ".join(
                f"{n} loss {r.loss:.3f} {r.rate:.0f} tok/s" for n, r in runs.items()), flush=True)

    result = {"steps": args.steps, "missing_mass": args.missing_mass, "threads": threads,
              "batch_size": cfg.train.batch_size, "seq_len": cfg.train.seq_len,
              "bytes_per_token": stats["bytes_per_token"], "heldout_reconstruction": rec, "kl_start": start_kl}
    for name, r in runs.items():
        result[name] = {"tokens_per_s": r.rate, "tokens": r.tokens, "seconds": r.seconds,
                        "cpu_seconds": r.cpu_seconds,
                        "heldout_kl": heldout_metrics(r.student.eval(), teacher, plain, device, logits_cache)["kl"]}
    ratio = result["cache"]["tokens_per_s"] / result["online"]["tokens_per_s"]
    cpu_ratio = result["online"]["cpu_seconds"] / result["cache"]["cpu_seconds"]
    rel = (result["cache"]["heldout_kl"] - result["online"]["heldout_kl"]) / result["online"]["heldout_kl"]
    result.update(speedup=ratio, speedup_cpu_time=cpu_ratio, heldout_kl_relative_difference=rel)
    fsutil.write_json(out / "bench.json", result)
    print(f"[result] tokens/s: online {result['online']['tokens_per_s']:.0f}, "
          f"cache {result['cache']['tokens_per_s']:.0f} -> {ratio:.2f}x (target >= 1.8x); by CPU time "
          f"{cpu_ratio:.2f}x")
    print(f"[result] held-out KL vs the real teacher after {args.steps} steps: online "
          f"{result['online']['heldout_kl']:.4f}, cache {result['cache']['heldout_kl']:.4f}, relative difference "
          f"{100 * rel:+.1f}% (target within 5%)")
    print(f"[result] cache {stats['bytes_per_token']:.1f} bytes/token (target <= 100), held-out KL(teacher ‖ "
          f"reconstructed) {rec['kl_stored']:.5f} (target <= 0.01); written to {out / 'bench.json'}", flush=True)
    return 0 if math.isfinite(ratio) else 1


if __name__ == "__main__":
    sys.exit(main())
