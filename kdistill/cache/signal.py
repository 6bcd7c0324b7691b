"""The teacher's distribution at the loss positions of a batch, reduced to what the cache stores.

`topk_rows` keeps the k most likely ids and the mass outside them; `topk_from_sparse` does the same from a
teacher that gave only its top K' >= k (a teacher server); `sampled_rows` draws ids from the teacher and
keeps the distinct ids with their counts. Both return the error of what is stored, measured
against the exact distribution (sums over rows, so shards and batches add up).
"""
from __future__ import annotations

import numpy as np
import torch

from kdistill.cache import codec


def _stored(top_lp: np.ndarray, value_bits: int) -> tuple[np.ndarray, ...]:
    """What a top-k cache stores of the top log-probabilities and its error per bucket: probs, rest mass,
    the dequantised K + 1 buckets, KL terms p log(p / p̂). Shapes: (N, k) -> (N, k), (N,), (N, k+1), (N, k+1)"""
    probs = np.exp(top_lp)
    rest = np.clip(1.0 - probs.sum(1), 0.0, 1.0)
    buckets = np.concatenate([probs, rest[:, None]], 1)
    approx = codec.dequantise(codec.quantise(buckets, value_bits))
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_terms = np.where(buckets > 0, buckets * (np.log(buckets) - np.log(approx)), 0.0)
    return probs, rest, approx, kl_terms


def topk_rows(logprobs: torch.Tensor, k: int, value_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Top-k ids, their probabilities and the rest mass, with the stored distribution's error.

    kl_stored: KL(p ‖ p̂) on the K + 1 buckets (top-k ids, everything else) after quantisation: what a loss
    with missing_mass=residual sees. kl_full: KL over the whole vocabulary when the rest mass is spread
    evenly over the other ids (it adds what no top-k cache stores, the shape of the tail).
    Shapes: logprobs (N, V) -> ids (N, k), probs (N, k) float64, rest (N,) float64, stats of sums
    """
    vocab = logprobs.shape[-1]
    top_lp, ids = logprobs.topk(k, dim=-1)
    lp = top_lp.double().numpy()
    probs, rest, approx, kl_terms = _stored(lp, value_bits)
    neg_entropy = (logprobs.exp() * logprobs).double().sum(-1).numpy()
    tail_plogp = neg_entropy - (probs * lp).sum(1)  # Σ over the other ids of p log p
    others = max(1, vocab - k)
    kl_full = kl_terms[:, :k].sum(1) + np.where(rest > 0, tail_plogp - rest * np.log(approx[:, k] / others), 0.0)
    stats = {"positions": len(lp), "captured_mass": float(probs.sum()), "kl_stored": float(kl_terms.sum()),
             "kl_full": float(kl_full.sum())}
    return ids.numpy().astype(np.int64), probs, rest, stats


def topk_from_sparse(top_ids: torch.Tensor, top_logprobs: torch.Tensor, k: int,
                     value_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """`topk_rows` from the teacher's K' >= k best ids and log-probabilities, sorted by rank (a teacher
    server's answer). What the tail looks like is unknown here, so the stats hold no kl_full.
    Shapes: top_ids, top_logprobs (N, K') -> ids (N, k), probs (N, k) float64, rest (N,) float64, stats"""
    lp = top_logprobs[:, :k].double().numpy()
    probs, rest, _, kl_terms = _stored(lp, value_bits)
    stats = {"positions": len(lp), "captured_mass": float(probs.sum()), "kl_stored": float(kl_terms.sum())}
    return top_ids[:, :k].numpy().astype(np.int64), probs, rest, stats


def sampled_rows(logprobs: torch.Tensor, samples: int,
                 generator: torch.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """`samples` draws per row from the teacher; distinct ids ascending with counts, zero-count padded.

    tv: total variation between the teacher and the empirical distribution counts / samples.
    Shapes: logprobs (N, V) -> ids (N, S'), counts (N, S'), stats of sums; S' = most distinct ids in a row
    """
    n, vocab = logprobs.shape
    probs = logprobs.exp()
    drawn = torch.multinomial(probs, samples, replacement=True, generator=generator).numpy()
    keys, counts = np.unique(np.arange(n)[:, None] * vocab + drawn, return_counts=True)
    row, ids = keys // vocab, keys % vocab
    per_row = np.bincount(row, minlength=n)
    slot = np.arange(len(keys)) - np.repeat(np.cumsum(per_row) - per_row, per_row)
    width = max(1, int(per_row.max(initial=1)))
    out_ids, out_counts = np.zeros((n, width), np.int64), np.zeros((n, width), np.int64)
    out_ids[row, slot], out_counts[row, slot] = ids, counts
    p = probs.double().numpy()[row, ids]
    captured = np.bincount(row, weights=p, minlength=n)
    tv = 0.5 * (np.bincount(row, weights=np.abs(p - counts / samples), minlength=n) + (1 - captured))
    stats = {"positions": n, "captured_mass": float(captured.sum()), "tv": float(tv.sum()),
             "ids": int(per_row.sum())}
    return out_ids, out_counts, stats
