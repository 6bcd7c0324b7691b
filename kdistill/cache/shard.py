"""One shard: the examples [start, end) of the data with the teacher's signal at their loss positions.

Tensors (safetensors, uint8 streams unless noted): `lengths` (int32, tokens per example), `tokens` (ids,
`id_bits` each), `mask` (one bit per token), then for top-k `ids_*`, `levels_*`, `rest_*`, or for sampled
`n_ids` (ids per position) with `ids_*`, `counts_*` (see `codec`). Signal rows exist only where a target
counts (mask[t + 1]), in example order; row r of an example predicts its token t + 1.
"""
from __future__ import annotations

import hashlib

import numpy as np

from kdistill.cache import bits as B
from kdistill.cache import codec


def signal_rows(examples: list[dict]) -> int:
    return sum(int(np.count_nonzero(e["mask"][1:])) for e in examples)


def group_key(group) -> int:
    """A stable 63-bit number for an example's "group" (the prompt it answers; batches.split)."""
    return int.from_bytes(hashlib.sha256(str(group).encode()).digest()[:8], "little") >> 1


def encode_tokens(examples: list[dict], id_bits: int) -> dict:
    """Token streams; "groups" (one number per example, -1 for none) only where an example has a group."""
    ids = np.concatenate([np.asarray(e["ids"], np.int64) for e in examples])
    mask = np.concatenate([np.asarray(e["mask"], np.bool_) for e in examples])
    out = {"lengths": np.array([len(e["ids"]) for e in examples], np.int32),
           "tokens": B.pack_fixed(ids, id_bits), "mask": np.packbits(mask)}
    if any("group" in e for e in examples):
        out["groups"] = np.array([group_key(e["group"]) if "group" in e else -1 for e in examples], np.int64)
    return out


def encode_topk(ids: np.ndarray, probs: np.ndarray, rest: np.ndarray, value_bits: int) -> dict:
    """Shapes: ids (N, K) distinct, probs (N, K), rest (N,) -> streams"""
    order = np.argsort(ids, axis=1, kind="stable")
    ids, probs = np.take_along_axis(ids, order, 1), np.take_along_axis(probs, order, 1)
    levels = codec.quantise(np.concatenate([probs, rest[:, None]], 1), value_bits)
    return {**codec.encode_ids(ids, np.ones(ids.shape, bool)), **codec.encode_levels(levels)}


def encode_sampled(ids: np.ndarray, counts: np.ndarray, samples: int) -> dict:
    """Shapes: ids (N, S) ascending where counts > 0 (a prefix), counts (N, S) -> streams"""
    active = counts > 0
    return {"n_ids": B.pack_fixed(active.sum(1), B.bit_length(np.array([samples]))[0]),
            **codec.encode_ids(ids, active), **codec.encode_counts(counts, active)}


def decode(tensors: dict, signal: dict, vocab_size: int) -> list[dict]:
    """Examples with their signal: ids, mask, signal_ids (n, S) int32, signal_logprobs (n, S) float32."""
    lengths = tensors["lengths"].astype(np.int64)
    total = int(lengths.sum())
    tokens = B.unpack_fixed(tensors["tokens"], signal["id_bits"], total)
    mask = np.unpackbits(tensors["mask"], count=total).astype(bool)
    if tokens.size and tokens.max() >= vocab_size:
        raise ValueError(f"a token id {int(tokens.max())} is outside the vocabulary ({vocab_size})")
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    n_rows = int(sum(np.count_nonzero(mask[a + 1:b]) for a, b in zip(bounds[:-1], bounds[1:])))
    if signal["mode"] == "topk":
        sig_ids, logprobs = _decode_topk(tensors, n_rows, signal["k"])
    else:
        sig_ids, logprobs = _decode_sampled(tensors, n_rows, signal["samples"])
    if sig_ids.size and sig_ids.max() >= vocab_size:
        raise ValueError(f"a teacher id {int(sig_ids.max())} is outside the vocabulary ({vocab_size})")
    out, row = [], 0
    groups = tensors.get("groups")
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        n = int(np.count_nonzero(mask[a + 1:b]))
        out.append({"ids": tokens[a:b].tolist(), "mask": mask[a:b].tolist(),
                    "signal_ids": sig_ids[row:row + n].astype(np.int32), "signal_logprobs": logprobs[row:row + n]})
        if groups is not None and groups[i] >= 0:
            out[-1]["group"] = int(groups[i])
        row += n
    return out


def _decode_topk(tensors: dict, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    ids = codec.decode_ids(tensors, np.ones((n, k), bool))
    probs = codec.dequantise(codec.decode_levels(tensors, n, k))[:, :k]
    return ids, np.log(probs).astype(np.float32)


def _decode_sampled(tensors: dict, n: int, samples: int) -> tuple[np.ndarray, np.ndarray]:
    n_ids = B.unpack_fixed(tensors["n_ids"], B.bit_length(np.array([samples]))[0], n)
    active = np.arange(max(1, int(n_ids.max(initial=1))))[None] < n_ids[:, None]
    ids = codec.decode_ids(tensors, active)
    counts = codec.decode_counts(tensors, active)
    if n and (counts.sum(1) != samples).any():
        raise ValueError(f"sample counts do not add up to {samples}")
    with np.errstate(divide="ignore"):
        logprobs = np.log(counts / samples).astype(np.float32)  # zero count -> -inf (a padded slot)
    return np.where(active, ids, 0), logprobs
