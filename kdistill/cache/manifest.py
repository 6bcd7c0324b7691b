"""The cache's manifest: what was cached, from what, how it is encoded, and how to check it.

`manifest.json` (format_version 1) holds: the teacher's identity and a sha256 of its weight files, the
tokenizer's fingerprint, the vocabulary size, the data's fingerprint and source, the signal settings
(mode, k or samples, temperature, value_bits, id_bits), seq_len, counts, and per shard its file name,
example range, positions, bytes, sha256 and `stats` (error sums over its positions, measured against the
exact teacher while writing; the top-level `stats` are their means per position, and bytes_per_token).
`complete` is false while a `kdistill cache` run writes.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from kdistill.base import fsutil
from kdistill.base.errors import KdistillError

FORMAT = "kdistill-teacher-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
TEACHER_CONFIG = "teacher_config.json"
REWRITE = "the manifest is damaged: rewrite the cache with `kdistill cache --overwrite` (same cache.out)"
REQUIRED = {  # key -> (type, keys it must hold); what the readers of a format-1 manifest use
    "complete": (bool, ()), "vocab_size": (int, ()), "seq_len": (int, ()), "shards": (list, ()),
    "teacher": (dict, ("spec", "weights_sha256", "parameters")), "tokenizer": (dict, ("sha256",)),
    "data": (dict, ("sha256", "examples", "source")), "signal": (dict, ("mode", "temperature", "id_bits")),
}
SHARD_KEYS = ("file", "examples", "positions", "bytes", "sha256")


class CacheError(KdistillError):
    """A teacher cache is unusable: missing, corrupted, truncated, of an unknown format version."""


class CacheMismatch(CacheError):
    """A valid cache that does not fit this run (another tokenizer, other data, another seq_len)."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what maps text to ids: the vocabulary with added tokens, and for fast tokenizers the
    normalizer, pre-tokenizer and model (merges). Pad-token choices and chat templates do not count."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        blob = {k: spec.get(k) for k in ("normalizer", "pre_tokenizer", "model", "added_tokens")}
    else:
        blob = {"vocab": sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def weights_fingerprint(folder: str | None, model) -> str:
    """sha256 over the teacher's weight files (dtype-independent), or over its tensors if it has none."""
    files = sorted(p for ext in ("*.safetensors", "*.bin", "*.gguf") for p in Path(folder or "").glob(ext)) \
        if folder and Path(folder).is_dir() else []
    h = hashlib.sha256()
    if files:
        for p in files:
            h.update(p.name.encode() + sha256_file(p).encode())
        return h.hexdigest()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode() + tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def data_fingerprint(examples: list[dict]) -> str:
    """sha256 of every example's token ids and loss mask, in order."""
    h = hashlib.sha256()
    for e in examples:
        ids = np.asarray(e["ids"], np.int64)
        h.update(np.int64(len(ids)).tobytes() + ids.tobytes() + np.asarray(e["mask"], np.bool_).tobytes())
    return h.hexdigest()


def write_manifest(folder: Path, manifest: dict) -> None:
    fsutil.write_json(folder / MANIFEST, manifest)


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a cache folder, its format and version checked; CacheError says what is wrong."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise CacheError(f"teacher cache {folder} does not exist; write one with `kdistill cache cache.out={folder}`")
    if not path.is_file():
        raise CacheError(f"{folder} is not a teacher cache (no {MANIFEST}); write one with `kdistill cache`")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CacheError(f"{path}: not valid JSON ({e}); the cache is damaged, rewrite it with `kdistill cache`")
    if not isinstance(manifest, dict):
        raise CacheError(f"{path}: a JSON {type(manifest).__name__}, not the object a kdistill teacher cache "
                         f"manifest is; {REWRITE}")
    if manifest.get("format") != FORMAT:
        raise CacheError(f"{path}: not a kdistill teacher cache manifest (format {manifest.get('format')!r}); "
                         f"give a folder `kdistill cache` wrote")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CacheError(f"{path}: cache format version {version!r}, but this kdistill reads version "
                         f"{FORMAT_VERSION}; rewrite the cache with this kdistill (`kdistill cache`) or use "
                         "the kdistill version that wrote it")
    problem = manifest_problem(manifest)
    if problem:
        raise CacheError(f"{path}: {problem}; {REWRITE}")
    return manifest


def _missing(section: dict, keys: tuple, where: str) -> str | None:
    gone = [k for k in keys if k not in section]
    return f"{where} has no {', '.join(repr(k) for k in gone)}" if gone else None


def manifest_problem(manifest: dict) -> str | None:
    """What is missing or of the wrong kind in a manifest of this format version (`REQUIRED`), or None."""
    for key, (kind, keys) in REQUIRED.items():
        if key not in manifest:
            return f"no {key!r} key"
        if not isinstance(manifest[key], kind) or isinstance(manifest[key], bool) and kind is not bool:
            return f"{key!r} is {manifest[key]!r}, not {kind.__name__}"
        problem = _missing(manifest[key], keys, repr(key)) if keys else None
        if problem:
            return problem
    for i, shard in enumerate(manifest["shards"]):
        if not isinstance(shard, dict):
            return f"shards[{i}] is {shard!r}, not an object"
        problem = _missing(shard, SHARD_KEYS, f"shards[{i}]")
        if problem:
            return problem
    return None


def check_complete(folder: Path, manifest: dict) -> None:
    if not manifest.get("complete"):
        done = len(manifest.get("shards", []))
        raise CacheError(f"{folder}: the cache is incomplete ({done} shards written; the `kdistill cache` run "
                         "was stopped). Run the same `kdistill cache` command again to finish it")


def verify_shard(folder: Path, shard: dict) -> None:
    """Size and sha256 of one shard file against the manifest."""
    path, fix = folder / shard["file"], "run the same `kdistill cache` command again to rewrite it"
    if not path.is_file():
        raise CacheError(f"{path}: shard missing (listed in {MANIFEST}); {fix}")
    size = path.stat().st_size
    if size != shard["bytes"]:
        raise CacheError(f"{path}: {size} bytes, the manifest says {shard['bytes']} (truncated or replaced); {fix}")
    if sha256_file(path) != shard["sha256"]:
        raise CacheError(f"{path}: checksum mismatch (corrupted); {fix}")


def data_source(cfg) -> dict:
    """What the manifest records of where the examples came from (a file and how it was read, or the
    generation settings), so a run can tell whether a cache was written from its data."""
    d = cfg.data
    if not d.path:
        import dataclasses

        return {"generated": dataclasses.asdict(d.generate)}
    return {"path": d.path, "format": d.format, "text_field": d.text_field, "split": d.split,
            "max_records": d.max_records}
