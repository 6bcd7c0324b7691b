"""`kdistill cache --inspect DIR`: what a cache holds, how many bytes each part takes, and its error.

Every shard is verified and decoded (so inspecting also checks the cache). Captured mass is read from
the stored data (top-k: 1 - the stored rest mass); the reconstruction error was measured against the
exact teacher distribution when the cache was written and is read from the manifest.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from kdistill.cache.reader import open_cache

GROUPS = {"tokens": ("lengths", "tokens", "mask"), "ids": ("ids_", "n_ids"), "values": ("levels_", "rest_"),
          "counts": ("counts_",)}


def byte_groups(folder: Path, shards: list[dict]) -> dict:
    """Bytes per part of the encoding over all shards; `header` is the safetensors headers."""
    out = {k: 0 for k in GROUPS}
    out["header"] = 0
    for shard in shards:
        tensors = load_file(str(folder / shard["file"]))
        for name, t in tensors.items():
            group = next(g for g, prefixes in GROUPS.items() if name.startswith(prefixes)) \
                if any(name.startswith(p) for ps in GROUPS.values() for p in ps) else "header"
            out[group] += t.nbytes
        out["header"] += shard["bytes"] - sum(t.nbytes for t in tensors.values())
    return {k: v for k, v in out.items() if v}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def summary(folder: str | Path) -> dict:
    cache = open_cache(folder)
    m, folder = cache.manifest, Path(folder)
    positions = sum(len(e["signal_ids"]) for e in cache.examples)
    mass = [np.exp(e["signal_logprobs"].astype(np.float64)).sum(1) for e in cache.examples]
    shard_bytes = sum(s["bytes"] for s in m["shards"])
    return {"manifest": m, "positions": positions, "shard_bytes": shard_bytes,
            "bytes_per_token": shard_bytes / max(1, positions), "folder_bytes": folder_bytes(folder),
            "groups": byte_groups(folder, m["shards"]),
            "captured_mass": float(np.concatenate(mass).mean()) if positions else 0.0}


def format_summary(folder, s: dict) -> str:
    m, sig, stats = s["manifest"], s["manifest"]["signal"], s["manifest"].get("stats", {})
    n = max(1, s["positions"])
    parts = ", ".join(f"{k} {v / n:.1f}" for k, v in s["groups"].items())
    mode = (f"top-k, k={sig['k']}, probabilities sqrt-quantised at {sig['value_bits']} bits"
            if sig["mode"] == "topk" else f"sampled, {sig['samples']} draws per position")
    lines = [
        f"teacher cache {folder} (format version {m['format_version']}, complete)",
        f"teacher:   {m['teacher']['spec']} ({m['teacher']['model_type']}, {m['teacher']['parameters']:,} parameters, "
        f"weights sha256 {m['teacher']['weights_sha256'][:12]})",
        f"tokenizer: sha256 {m['tokenizer']['sha256'][:12]}, vocabulary {m['vocab_size']:,} ({sig['id_bits']}-bit ids)",
        f"data:      {m['data']['examples']:,} examples, {m['data']['tokens']:,} tokens, {s['positions']:,} teacher "
        f"positions, seq_len {m['seq_len']} (sha256 {m['data']['sha256'][:12]})",
        f"signal:    {mode}, temperature {sig['temperature']}",
        f"size:      {len(m['shards'])} shards, {s['shard_bytes']:,} bytes = {s['bytes_per_token']:.1f} bytes/token "
        f"({parts}); folder with tokenizer {s['folder_bytes']:,} bytes",
        f"captured probability mass (mean): {s['captured_mass']:.4f}" if sig["mode"] == "topk" else
        f"distinct ids per position (mean): {stats.get('ids', 0):.1f}; "
        f"captured mass {stats.get('captured_mass', 0):.4f}",
    ]
    if sig["mode"] == "topk":
        lines.append(f"reconstruction error (vs the exact teacher, at write time): KL(teacher ‖ stored) "
                     f"{stats.get('kl_stored', float('nan')):.5f} nats/token on the top-k + rest buckets; "
                     f"{stats.get('kl_full', float('nan')):.4f} over the full vocabulary with the rest spread evenly")
    else:
        lines.append(f"reconstruction error (vs the exact teacher, at write time): total variation "
                     f"{stats.get('tv', float('nan')):.4f} (sampling noise; unbiased in expectation)")
    return "\n".join(lines)
