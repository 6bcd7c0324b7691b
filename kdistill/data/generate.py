"""Teacher-generated data: the teacher continues a built-in, varied prompt set with sampling.

Generation is batched (left padding) and cached: the result is written once as JSONL under
`$KDISTILL_CACHE/generated/<key>/`, where the key covers the teacher's identity, the prompts and every
sampling setting, so a second run with the same settings reuses it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math

import torch
from tqdm.auto import tqdm

from .. import fsutil
from ..teacher import cache_root
from .prompts import CHAT, PLAIN

log = logging.getLogger("kdistill")


def prompt_texts(tokenizer, n: int) -> list[str]:
    """n prompts cycling through the plain and chat sets (about 2 plain : 1 chat)."""
    chat = [tokenizer.apply_chat_template([{"role": "user", "content": c}], tokenize=False,
                                          add_generation_prompt=True) for c in CHAT] \
        if getattr(tokenizer, "chat_template", None) else [f"{c}\n" for c in CHAT]
    pool = [p for pair in zip(PLAIN, PLAIN[1:] + PLAIN[:1], chat * 3) for p in pair]
    pool += [p for p in PLAIN + chat if p not in pool]
    return [pool[i % len(pool)] for i in range(n)]


def cache_key(teacher_id: str, settings, prompts: list[str]) -> str:
    blob = json.dumps({"teacher": teacher_id, "settings": dataclasses.asdict(settings), "prompts": prompts})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@torch.no_grad()
def _generate_batch(model, tokenizer, prompts: list[str], settings, device) -> list[list[int]]:
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    out = model.generate(**enc, do_sample=True, temperature=settings.temperature, top_p=settings.top_p,
                         max_new_tokens=settings.max_new_tokens, pad_token_id=tokenizer.pad_token_id)
    rows = []
    for i in range(len(prompts)):
        prompt_ids = enc["input_ids"][i][enc["attention_mask"][i].bool()].tolist()
        new = out[i, enc["input_ids"].shape[1]:].tolist()
        if tokenizer.eos_token_id in new:
            new = new[:new.index(tokenizer.eos_token_id) + 1]
        while new and new[-1] == tokenizer.pad_token_id and new[-1] != tokenizer.eos_token_id:
            new.pop()
        rows.append(prompt_ids + new)
    return rows


def generate_records(model, tokenizer, teacher_id: str, settings, device) -> list[dict]:
    """Return records {"ids": [...], "text": ...}; generated once per settings, then read from cache."""
    prompts = prompt_texts(tokenizer, settings.num_samples)
    folder = cache_root() / "generated" / cache_key(teacher_id, settings, prompts)
    path = folder / "records.jsonl"
    if path.is_file():
        log.info("reusing teacher-generated data from %s", path)
        return [json.loads(line) for line in path.read_text().splitlines()]
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    torch.manual_seed(settings.seed)
    records = []
    batches = math.ceil(len(prompts) / settings.batch_size)
    for b in tqdm(range(batches), desc="teacher generates data", unit="batch", dynamic_ncols=True):
        chunk = prompts[b * settings.batch_size:(b + 1) * settings.batch_size]
        for ids in _generate_batch(model, tokenizer, chunk, settings, device):
            records.append({"ids": ids, "text": tokenizer.decode(ids, skip_special_tokens=True)})
    tokenizer.padding_side = "right"
    fsutil.write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    fsutil.write_json(folder / "settings.json", {"teacher": teacher_id, **dataclasses.asdict(settings)})
    return records


def examples_from_generated(records: list[dict], seq_len: int) -> list[dict]:
    """Each generated sequence is its own example (truncated to seq_len+1), loss on every token."""
    out = []
    for r in records:
        ids = r["ids"][:seq_len + 1]
        if len(ids) >= 2:
            out.append({"ids": ids, "mask": [True] * len(ids)})
    return out
