"""Open a teacher cache for training: manifest, checksums and every shard checked before step 0.

    cache = open_cache("runs/teacher-cache")          # CacheError if anything is wrong
    stream = BatchStream(cache.examples, 8, seed, pad, collate_fn=cache.collate_fn(pad))
    batch = stream.next()                             # input_ids ... mask, and "signal": SparseSignal

Examples carry `signal_ids` (n, S) and `signal_logprobs` (n, S) for their n loss positions; `collate`
places them at those positions of a (B, T, S) SparseSignal (top-k: S = k; sampled: the most distinct ids
of the batch, padded with -inf). Decoded, a position takes S * 8 bytes of memory.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file

from kdistill.cache import manifest as M
from kdistill.cache import shard as S
from kdistill.data import batches as batching
from kdistill.losses import SparseSignal


@dataclass
class TeacherCache:
    folder: Path
    manifest: dict
    examples: list[dict]

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    def load_tokenizer(self):
        """The tokenizer stored in the cache, checked against the manifest's fingerprint."""
        from transformers import AutoTokenizer

        folder = self.folder / M.TOKENIZER_DIR
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        except (OSError, ValueError) as e:
            raise M.CacheError(f"{folder}: cannot load the cache's tokenizer ({e}); rewrite the cache with "
                               "`kdistill cache --overwrite`") from e
        if M.tokenizer_fingerprint(tokenizer) != self.manifest["tokenizer"]["sha256"]:
            raise M.CacheError(f"{folder}: the tokenizer files do not match the manifest's fingerprint (changed "
                               "after writing); rewrite the cache with `kdistill cache --overwrite`")
        return tokenizer

    def teacher_config(self):
        from transformers import AutoConfig

        path = self.folder / M.TEACHER_CONFIG
        try:
            return AutoConfig.for_model(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, ValueError, TypeError) as e:  # TypeError: not a JSON object
            raise M.CacheError(f"{path}: cannot read the teacher's config ({type(e).__name__}: {e}); rewrite the "
                               "cache with `kdistill cache --overwrite`") from e

    def collate_fn(self, pad_id: int):
        return lambda picked: collate(picked, pad_id)


def read_shard(folder: Path, shard: dict, manifest: dict) -> list[dict]:
    """Verify and decode one shard; any inconsistency is a CacheError naming the file."""
    M.verify_shard(folder, shard)
    path = folder / shard["file"]
    try:
        examples = S.decode(load_file(str(path)), manifest["signal"], manifest["vocab_size"])
    except (SafetensorError, ValueError, KeyError) as e:
        raise M.CacheError(f"{path}: cannot decode ({type(e).__name__}: {e}); the shard is damaged, delete it "
                           "and run the same `kdistill cache` command again to rewrite it") from e
    start, end = shard["examples"]
    rows = sum(len(e["signal_ids"]) for e in examples)
    if len(examples) != end - start or rows != shard["positions"]:
        raise M.CacheError(f"{path}: holds {len(examples)} examples and {rows} positions, the manifest says "
                           f"{end - start} and {shard['positions']}; rewrite the cache with `kdistill cache`")
    return examples


def open_cache(folder: str | Path) -> TeacherCache:
    """Read a complete cache: manifest, every shard's size, checksum and contents, the data fingerprint."""
    folder = Path(folder)
    manifest = M.read_manifest(folder)
    M.check_complete(folder, manifest)
    examples = [e for shard in manifest["shards"] for e in read_shard(folder, shard, manifest)]
    if len(examples) != manifest["data"]["examples"] or M.data_fingerprint(examples) != manifest["data"]["sha256"]:
        raise M.CacheError(f"{folder}: the shards' token ids do not match the manifest's data fingerprint; "
                           "rewrite the cache with `kdistill cache --overwrite`")
    return TeacherCache(folder, manifest, examples)


def collate(examples: list[dict], pad_id: int) -> dict:
    """`batches.collate` plus "signal": the cached teacher signal at each loss position.

    Shapes: -> input_ids, attention_mask, targets, mask (B, T); signal ids, logprobs (B, T, S)
    """
    batch = batching.collate(examples, pad_id)
    b, t = batch["mask"].shape
    width = max(e["signal_ids"].shape[1] for e in examples)
    ids = torch.arange(width).expand(b, t, width).clone()
    logprobs = torch.full((b, t, width), -float(np.log(width)))
    for i, e in enumerate(examples):
        rows = batch["mask"][i].nonzero().squeeze(-1)
        w = e["signal_ids"].shape[1]
        ids[i, rows, :w] = torch.from_numpy(e["signal_ids"]).long()
        logprobs[i, rows] = float("-inf")
        logprobs[i, rows, :w] = torch.from_numpy(e["signal_logprobs"])
    return {**batch, "signal": SparseSignal(ids=ids, logprobs=logprobs)}
