"""Teacher-generated data: the teacher continues token prompts with sampling, in batches, cached and resumable.

    records, folder = generate(teacher, tokenizer, teacher_id, prompts, sampling(cfg.data.generate), device)
    # records[i] = {"prompt": j, "ids": prompt ids + new ids, "n_prompt": len(prompt ids), "text": new text}

Generation is batched (left padding) and cached under `$KDISTILL_CACHE/generated/<key>/`, where the key
covers the teacher's identity, the prompts' token ids, every sampling setting and what the caller adds
(a prompts file's content hash), so a second run with the same settings reuses `records.jsonl`.

Two runs that would write the same folder take turns (an flock on `<key>/.lock`): the second waits
and reads the first's records instead of writing them again beside it.
Each finished batch is appended as one line to `records.partial.jsonl` (one write, flushed to disk), so a
killed generation keeps what it finished: the next run reads the complete lines, drops a torn last one
and continues with the next batch. Batch b is sampled with seed `seed + b`, so a resumed generation
writes exactly what an uninterrupted one would have.

With no prompts file the teacher continues the built-in set (prompts.py). Every generated example counts
only the teacher's tokens: the prompt is context, not a target.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from pathlib import Path

import torch
from tqdm.auto import tqdm

from kdistill.base import fsutil
from kdistill.base.errors import ModelError
from kdistill.data.prompts import CHAT, PLAIN
from kdistill.data.sampler import sample_batch
from kdistill.models.teacher import cache_root

log = logging.getLogger("kdistill")
FORMAT = 3  # the record layout and sampler; part of the key, so a cache of another layout is never read.
# 3: sampler.sample_batch (finished rows leave the batch; temperature + top-p, no HF default top-k=50)
SAMPLING = ("max_new_tokens", "temperature", "top_p", "batch_size", "seed")
RECORDS, PARTIAL, LOCK = "records.jsonl", "records.partial.jsonl", ".lock"


def sampling(settings, **override) -> dict:
    """The sampling settings of a GenerateConfig (the only ones that change what is generated)."""
    return {**{k: getattr(settings, k) for k in SAMPLING}, **override}


def prompt_texts(tokenizer, n: int) -> list[str]:
    """n built-in prompts, 2 plain : 1 chat, each set in a fixed shuffled order (so the first few dozen
    already mix stories, facts, how-to, code and dialogue); every prompt comes once before any repeats."""
    chat = [tokenizer.apply_chat_template([{"role": "user", "content": c}], tokenize=False,
                                          add_generation_prompt=True) for c in CHAT] \
        if getattr(tokenizer, "chat_template", None) else [f"{c}\n" for c in CHAT]
    plain, chat = _shuffled(PLAIN), _shuffled(chat)
    triples = max(math.ceil(len(plain) / 2), len(chat))  # two plain prompts and one chat prompt each
    pool = [p for i in range(triples) for p in plain[2 * i:2 * i + 2] + chat[i:i + 1]]
    return [pool[i % len(pool)] for i in range(n)]


def _shuffled(items: list[str]) -> list[str]:
    order = list(range(len(items)))
    random.Random(0).shuffle(order)
    return [items[i] for i in order]


def builtin_prompts(tokenizer, n: int) -> list[list[int]]:
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in prompt_texts(tokenizer, n)]


def cache_key(teacher_id: str, settings: dict, prompts: list[list[int]], extra: dict | None = None) -> str:
    blob = json.dumps({"format": FORMAT, "teacher": teacher_id, "settings": settings, "prompts": prompts,
                       "extra": extra or {}})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@torch.no_grad()
def _generate_batch(model, tokenizer, prompts: list[list[int]], settings: dict, device) -> list[list[int]]:
    """The new ids of each prompt, cut after the first EOS (the tokenizer's, or one of the model's
    generation config), by `sampler.sample_batch`: rows that finished leave the batch. Shapes: B prompts ->
    B lists of <= max_new_tokens"""
    eos = {tokenizer.eos_token_id}
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos |= set(config_eos) if isinstance(config_eos, (list, tuple)) else {config_eos}
    return sample_batch(model, prompts, tokenizer.pad_token_id, eos - {None}, settings["max_new_tokens"],
                        settings["temperature"], settings["top_p"], device=device)


def read_partial(path: Path) -> list[list[dict]]:
    """The complete batches of a partial file, in order; a torn last line (a kill mid-write) is dropped."""
    if not path.is_file():
        return []
    done = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if row.get("batch") != len(done):
            break
        done.append(row["rows"])
    return done


def _finished(folder: Path) -> list[dict] | None:
    path = folder / RECORDS
    if not path.is_file():
        return None
    log.info("reusing teacher-generated data from %s", path)
    return [json.loads(line) for line in path.read_text().splitlines()]


def generate(model, tokenizer, teacher_id: str, prompts: list[list[int]], settings: dict, device,
             desc: str = "teacher generates data", extra: dict | None = None) -> tuple[list[dict], Path]:
    """Records of every prompt (in order) and the cache folder that holds them; see the module docstring.
    `model` is the local teacher, or a writer with `write_batch(prompts, settings, seed)` (a teacher server:
    sources/server_writer.py)."""
    folder = cache_root() / "generated" / cache_key(teacher_id, settings, prompts, extra)
    records = _finished(folder)
    if records is not None:
        return records, folder
    if model is None:
        raise ModelError("teacher-generated data needs the teacher model: load teacher.model, or give data.path")
    folder.mkdir(parents=True, exist_ok=True)
    with fsutil.waiting_lock(folder / LOCK, "writing the same teacher data"):
        records = _finished(folder)  # written by the run we waited for
        if records is not None:
            return records, folder
        return _write(model, tokenizer, prompts, settings, device, desc, extra, folder, teacher_id)


def _write(model, tokenizer, prompts, settings, device, desc, extra, folder: Path, teacher_id: str):
    """generate()'s work under the folder's lock: resume the partial file, write the missing batches."""
    partial = folder / PARTIAL
    done = read_partial(partial)
    if done:
        fsutil.write_text(partial, "".join(json.dumps({"batch": b, "rows": r}) + "\n" for b, r in enumerate(done)))
        log.info("resuming teacher generation in %s: %d batches already written", folder, len(done))
    size = settings["batch_size"]
    batches = math.ceil(len(prompts) / size)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for b in tqdm(range(len(done), batches), desc=desc, unit="batch", total=batches, initial=len(done),
                      dynamic_ncols=True):
            chunk = prompts[b * size:(b + 1) * size]
            torch.manual_seed(settings["seed"] + b)
            news = model.write_batch(chunk, settings, settings["seed"] + b) if hasattr(model, "write_batch") \
                else _generate_batch(model, tokenizer, chunk, settings, device)
            rows = [{"prompt": b * size + i, "ids": p + new, "n_prompt": len(p),
                     "text": tokenizer.decode(new, skip_special_tokens=True)} for i, (p, new) in enumerate(zip(chunk, news))]
            fsutil.append_jsonl(partial, {"batch": b, "rows": rows})
            done.append(rows)
    finally:
        tokenizer.padding_side = side
    records = [r for rows in done for r in rows]
    fsutil.write_text(folder / RECORDS, "".join(json.dumps(r) + "\n" for r in records))
    fsutil.write_json(folder / "settings.json", {"teacher": teacher_id, **settings, **(extra or {})})
    partial.unlink(missing_ok=True)
    return records, folder


def generate_records(model, tokenizer, teacher_id: str, settings, device) -> tuple[list[dict], Path]:
    """The built-in prompts, `settings.num_samples` of them, continued by the teacher."""
    prompts = builtin_prompts(tokenizer, settings.num_samples)
    return generate(model, tokenizer, teacher_id, prompts, sampling(settings), device)


def fit(ids: list[int], n_prompt: int, seq_len: int) -> tuple[list[int], int]:
    """(ids of at most seq_len + 1, new n_prompt): a prompt that leaves the answer too little room is cut
    from the left to what is left, and to no less than a quarter of the window."""
    room = seq_len + 1
    keep = min(n_prompt, max(room - (len(ids) - n_prompt), room // 4))
    return ids[n_prompt - keep:][:room], keep


def examples_from_generated(records: list[dict], seq_len: int) -> list[dict]:
    """Each generated sequence is its own example (`fit` to seq_len+1); the loss counts the teacher's
    tokens only (mask[j] is True for ids[j] at or after the prompt). "group" is the prompt's text, so the
    held-out split keeps a prompt's samples on one side (batches.split)."""
    out = []
    for r in records:
        ids, n_prompt = fit(r["ids"], r["n_prompt"], seq_len)
        mask = [j >= n_prompt for j in range(len(ids))]
        if len(ids) >= 2 and any(mask[1:]):
            out.append({"ids": ids, "mask": mask, **({"group": r["prompt_text"]} if "prompt_text" in r else {})})
    return out
