"""Tokens/s of teacher-written data: HF generate (the old path) against sampler.sample_batch (finished rows
leave the batch), on the embedded teacher in float32 on the CPU; or sample_batch alone at several batch sizes.

    .venv/bin/python scripts/bench_generate.py --threads 2 [--prompts 32 --rounds 2]
    .venv/bin/python scripts/bench_generate.py --threads 2 --prompts 80 --batch-sizes 16 40 80

The two paths run alternately (A B A B ...) on the same built-in prompts, in batches of 16 with
max_new_tokens 112, temperature 0.8, top_p 0.95, each batch seeded as teacher_written does. Both keep only
the new ids up to the first EOS; "kept" counts those. Prints each run and the totals, with the ratio.
"""
from __future__ import annotations

import argparse
import time

import torch

from kdistill.data.sampler import _trim, sample_batch
from kdistill.data.teacher_written import builtin_prompts
from kdistill.models.teacher import load_teacher

SETTINGS = {"max_new_tokens": 112, "temperature": 0.8, "top_p": 0.95, "batch_size": 16, "seed": 0}


@torch.no_grad()
def old_batch(model, tok, prompts, s):
    """The HF generate path teacher_written used before FORMAT 3."""
    enc = tok.pad({"input_ids": prompts}, padding=True, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=s["max_new_tokens"], pad_token_id=tok.pad_token_id, do_sample=True,
                         temperature=s["temperature"], top_p=s["top_p"])
    return [_trim(row[enc["input_ids"].shape[1]:].tolist(), {tok.eos_token_id}, tok.pad_token_id) for row in out]


def new_batch(model, tok, prompts, s):
    return sample_batch(model, prompts, tok.pad_token_id, tok.eos_token_id, s["max_new_tokens"], s["temperature"],
                        s["top_p"])


def run(fn, model, tok, prompts, s) -> tuple[int, float]:
    """(kept tokens, seconds) of writing every prompt in batches."""
    kept, start = 0, time.perf_counter()
    size = s["batch_size"]
    for b in range(0, len(prompts), size):
        torch.manual_seed(s["seed"] + b // size)
        kept += sum(len(r) for r in fn(model, tok, prompts[b:b + size], s))
    return kept, time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                    help="sample_batch alone at these batch sizes, alternated (instead of old against new)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok, folder = load_teacher("default", torch.device("cpu"), torch.float32)
    tok.pad_token = tok.pad_token or tok.eos_token
    tok.padding_side = "left"
    prompts = builtin_prompts(tok, args.prompts)
    print(f"teacher {folder}, {args.prompts} prompts, {args.rounds} rounds, {args.threads} threads, {SETTINGS}")
    run(new_batch, model, tok, prompts[:2], {**SETTINGS, "max_new_tokens": 4})  # warm-up
    if args.batch_sizes:
        variants = [(f"sample_batch, batch {b}", new_batch, {**SETTINGS, "batch_size": b}) for b in args.batch_sizes]
    else:
        variants = [("old (HF generate)", old_batch, SETTINGS), ("new (sample_batch)", new_batch, SETTINGS)]
    totals = {name: [0, 0.0] for name, _, _ in variants}
    for r in range(args.rounds):
        for name, fn, settings in variants:
            kept, secs = run(fn, model, tok, prompts, settings)
            totals[name][0] += kept
            totals[name][1] += secs
            print(f"round {r} {name:20s} kept {kept:5d} tokens  {secs:7.1f} s  {kept / secs:7.1f} tokens/s")
    rates = {}
    for name, (kept, secs) in totals.items():
        rates[name] = kept / secs
        print(f"total   {name:20s} kept {kept:5d} tokens  {secs:7.1f} s  {rates[name]:7.1f} tokens/s")
    first, *rest = rates.items()
    for name, rate in rest:
        print(f"ratio {name} / {first[0]} tokens/s: {rate / first[1]:.2f}")


if __name__ == "__main__":
    main()
