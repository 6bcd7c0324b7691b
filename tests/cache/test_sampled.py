"""Sampled mode is unbiased: the stored counts / samples average to the teacher's probabilities, through
the encoding and `SparseSignal.from_counts`, on a small vocabulary."""
import numpy as np
import torch

from kdistill.cache import shard
from kdistill.cache.signal import sampled_rows


def test_sampled_signal_is_unbiased_in_expectation():
    p = torch.tensor([0.5, 0.2, 0.12, 0.08, 0.05, 0.03, 0.015, 0.005], dtype=torch.float64)
    rows, samples = 4000, 5
    logprobs = p.log().float().expand(rows, -1).contiguous()
    ids, counts, stats = sampled_rows(logprobs, samples, torch.Generator().manual_seed(0))
    tensors = shard.encode_sampled(ids, counts, samples)
    tensors.update(shard.encode_tokens([{"ids": [0] * (rows + 1), "mask": [True] * (rows + 1)}], 3))
    (example,) = shard.decode(tensors, {"mode": "sampled", "samples": samples, "id_bits": 3}, 8)
    estimate = np.zeros((rows, 8))
    np.add.at(estimate, (np.arange(rows)[:, None].repeat(example["signal_ids"].shape[1], 1), example["signal_ids"]),
              np.exp(example["signal_logprobs"].astype(np.float64)))
    mean, sem = estimate.mean(0), estimate.std(0) / np.sqrt(rows)
    assert np.all(np.abs(mean - p.numpy()) < 4 * sem + 1e-9), (mean, p)  # unbiased: within 4 standard errors
    assert np.allclose(estimate.sum(1), 1)
    assert stats["positions"] == rows and stats["ids"] == (counts > 0).sum()
    # a single row is far from p (5 draws), the average is not: the estimator's variance, not a bias
    assert np.abs(estimate[0] - p.numpy()).sum() > 10 * np.abs(mean - p.numpy()).sum()
