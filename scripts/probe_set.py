"""A held-out text no built-in run trains on: the embedded teacher's answers to data/probe_prompts.jsonl.

    .venv/bin/python scripts/probe_set.py --out /tmp/probe.jsonl
    kdistill eval --student RUN/student --teacher default --data /tmp/probe.jsonl --no-speed --out F

Each run's own held-out split depends on its corpus: runs that write 80, 160 or 240 answers hold out
different prompts, and past 104 answers every built-in prompt (kdistill/data/prompts.py) is a training
prompt of some run. The 54 probe prompts (36 plain, 18 chat, none of them built-in) are answered with the
sampling of configs/demo.yaml (max_new_tokens 112, temperature 0.8, top_p 0.95; seed 0) and written as text records
(prompt and answer as one text), so `kdistill eval --data` scores every student on the same tokens.
Prints the answers' token count.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from kdistill.config.schema import load_config
from kdistill.data import prompts_file
from kdistill.data.sampler import sample_batch
from kdistill.models.teacher import load_teacher

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "data" / "probe_prompts.jsonl"


def read_probe() -> list[dict]:
    """The probe's records: {"prompt": text, "chat": bool}."""
    return [json.loads(line) for line in PROMPTS.read_text().splitlines() if line.strip()]


def prompt_ids(tok, records: list[dict]) -> list[list[int]]:
    """Chat prompts through the tokenizer's chat template, plain prompts as text (prompts_file.prompt_ids, as
    the teacher's own data is rendered)."""
    return [prompts_file.prompt_ids(tok, prompts_file.plain(r["prompt"]), "chat" if r["chat"] else "plain")
            for r in records]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = load_config(ROOT / "configs" / "demo.yaml").data.generate  # the demo's sampling
    model, tok, _ = load_teacher("default", torch.device("cpu"), torch.float32)
    prompts = prompt_ids(tok, read_probe())
    torch.manual_seed(args.seed)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    answers = sample_batch(model, prompts, pad, tok.eos_token_id, g.max_new_tokens, g.temperature, g.top_p)
    rows = [{"text": tok.decode(p + a)} for p, a in zip(prompts, answers)]
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} answers, {sum(len(a) for a in answers)} answer tokens -> {args.out}")


if __name__ == "__main__":
    main()
