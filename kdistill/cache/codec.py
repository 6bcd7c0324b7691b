"""Encode one shard's teacher signal compactly, and decode it: token ids, sorted id sets, quantised values.

Layout (all streams slot-major: slot 0 of every position, then slot 1, ...; see `bits` for streams):

- token ids: fixed width, `id_bits` = bits of (vocab_size - 1) each.
- id sets: each position's ids sorted ascending, stored as gaps g = id - previous id - 1 with a Rice code
  whose width r depends on a context, the bit length of the previous id (+1): BPE ids are ordered by
  merge frequency, so the teacher's candidates crowd the low ids and the gaps grow with the id.
  r per context is chosen per shard to minimise the size and stored as a small table (`*_rice`).
  A Rice code is the quotient g >> r in unary (one stream) and the low r bits (another stream), so
  all quotients decode at once and only the low bits need the slot-by-slot loop.
- top-k values: the K probabilities and the mass outside them (K + 1 buckets, summing to 1) quantised as
  level = round(sqrt(p) * 2^value_bits). sqrt is the metric in which KL is Euclidean (Fisher: KL ~
  2 Σ (Δ sqrt p)^2), so one step costs the same KL everywhere. Levels are Rice coded in the ids' order
  with the previous level's bit length as context. Decoding gives p ∝ level^2 + 1/12 (the mean of
  u^2 over the level's bin, never 0), normalised over the K + 1 buckets.
- sampled counts: unary (count - 1); they sum to the number of samples, so a position costs that many bits.
"""
from __future__ import annotations

import numpy as np

from kdistill.cache import bits as B

N_CONTEXTS = 64


def rice_table(values: np.ndarray, contexts: np.ndarray) -> np.ndarray:
    """Per context, the Rice width minimising the total code length. Shapes: (M,), (M,) -> (N_CONTEXTS,)"""
    table = np.zeros(N_CONTEXTS, np.uint8)
    for c in np.unique(contexts):
        v = values[contexts == c]
        costs = [int((v >> r).sum()) + v.size * r for r in range(24)]
        table[c] = int(np.argmin(costs))
    return table


def encode_slots(values: np.ndarray, active: np.ndarray, contexts: np.ndarray, name: str) -> dict:
    """Rice-code `values` at the active slots, slot-major. Shapes: (N, S) each -> named streams"""
    v, ctx = values.T[active.T].astype(np.int64), contexts.T[active.T].astype(np.int64)
    table = rice_table(v, ctx)
    width = table[ctx].astype(np.int64)
    q, q_bits = B.pack_unary(v >> width)
    low, low_bits = B.pack_varwidth(v & ((np.int64(1) << width) - 1), width)
    return {f"{name}_q": q, f"{name}_low": low, f"{name}_rice": table,
            f"{name}_bits": np.array([q_bits, low_bits], np.int64)}


def decode_slots(streams: dict, name: str, active: np.ndarray, context_of) -> np.ndarray:
    """Inverse of encode_slots; context_of(j, rows, out) gives slot j's contexts from slots < j.

    Shapes: active (N, S) bool -> (N, S) int64 (0 at inactive slots)
    """
    q_bits, low_bits = (int(x) for x in streams[f"{name}_bits"])
    counts = active.sum(0)
    q = B.unpack_unary(streams[f"{name}_q"], q_bits, int(counts.sum()))
    low = np.unpackbits(streams[f"{name}_low"], count=low_bits)
    table = streams[f"{name}_rice"].astype(np.int64)
    out = np.zeros(active.shape, np.int64)
    q_at, low_at = 0, 0
    for j in range(active.shape[1]):
        rows = np.flatnonzero(active[:, j])
        width = table[context_of(j, rows, out)]
        starts = low_at + np.cumsum(width) - width
        if starts.size and int(starts[-1] + width[-1]) > low_bits:
            raise ValueError(f"{name}: the low-bits stream is shorter than its codes")
        out[rows, j] = (q[q_at:q_at + rows.size] << width) | B.read_varwidth(low, starts, width)
        q_at, low_at = q_at + rows.size, low_at + int(width.sum())
    return out


def _id_contexts(sorted_ids: np.ndarray) -> np.ndarray:
    prev = np.concatenate([np.full((len(sorted_ids), 1), -1), sorted_ids[:, :-1]], 1)
    return B.bit_length(prev + 1)


def encode_ids(sorted_ids: np.ndarray, active: np.ndarray) -> dict:
    """Sets of distinct ids, ascending along the last axis. Shapes: (N, S), active (N, S) prefix mask"""
    gaps = np.diff(sorted_ids, axis=1, prepend=-1) - 1
    if (gaps[active] < 0).any():
        raise ValueError("ids must be distinct and sorted ascending at active slots")
    return encode_slots(gaps, active, _id_contexts(sorted_ids), "ids")


def decode_ids(streams: dict, active: np.ndarray) -> np.ndarray:
    """Inverse of encode_ids. Shapes: active (N, S) -> (N, S) int64"""
    prev = np.full(len(active), -1, np.int64)

    def context_of(j, rows, gaps):
        if j:
            prev[rows] += gaps[rows, j - 1] + 1
        return B.bit_length(prev[rows] + 1)

    gaps = decode_slots(streams, "ids", active, context_of)
    return np.cumsum(gaps + 1, axis=1) - 1


def quantise(probs: np.ndarray, value_bits: int) -> np.ndarray:
    """Levels round(sqrt(p) * 2^bits). Shapes: (..., S) -> (..., S) int64"""
    top = 1 << value_bits
    return np.clip(np.rint(np.sqrt(np.clip(probs, 0, 1)) * top), 0, top).astype(np.int64)


def dequantise(levels: np.ndarray) -> np.ndarray:
    """Probabilities from levels of all K + 1 buckets, normalised. Shapes: (..., K + 1) -> float64"""
    p = levels.astype(np.float64) ** 2 + 1.0 / 12
    return p / p.sum(-1, keepdims=True)


def _level_contexts(levels: np.ndarray) -> np.ndarray:
    prev = np.concatenate([np.zeros((len(levels), 1), np.int64), levels[:, :-1]], 1)
    return B.bit_length(prev)


def encode_levels(levels: np.ndarray) -> dict:
    """Levels of the K ids (in the ids' order) and of the rest bucket. Shapes: (N, K + 1)"""
    body = encode_slots(levels[:, :-1], np.ones(levels[:, :-1].shape, bool), _level_contexts(levels[:, :-1]),
                        "levels")
    rest = encode_slots(levels[:, -1:], np.ones((len(levels), 1), bool), np.zeros((len(levels), 1), np.int64),
                        "rest")
    return {**body, **rest}


def decode_levels(streams: dict, n: int, k: int) -> np.ndarray:
    """Inverse of encode_levels. Shapes: -> (n, k + 1) int64"""
    body = decode_slots(streams, "levels", np.ones((n, k), bool),
                        lambda j, rows, out: B.bit_length(out[rows, j - 1]) if j else np.zeros(rows.size, np.int64))
    rest = decode_slots(streams, "rest", np.ones((n, 1), bool), lambda j, rows, out: np.zeros(rows.size, np.int64))
    return np.concatenate([body, rest], 1)


def encode_counts(counts: np.ndarray, active: np.ndarray) -> dict:
    """Sample counts (>= 1 at active slots) as unary (count - 1), slot-major. Shapes: (N, S)"""
    data, n_bits = B.pack_unary(counts.T[active.T] - 1)
    return {"counts_q": data, "counts_bits": np.array([n_bits], np.int64)}


def decode_counts(streams: dict, active: np.ndarray) -> np.ndarray:
    out = np.zeros(active.shape, np.int64)
    values = B.unpack_unary(streams["counts_q"], int(streams["counts_bits"][0]), int(active.sum())) + 1
    out.T[active.T] = values
    return out
