"""Bit streams and the shard codec: lossless where it must be, within the stated error where it quantises."""
import numpy as np
import pytest

from kdistill.cache import bits as B
from kdistill.cache import codec


def test_bit_streams_round_trip():
    rng = np.random.default_rng(0)
    v = rng.integers(0, 2**13, 1000)
    assert (B.unpack_fixed(B.pack_fixed(v, 13), 13, 1000) == v).all()
    u = rng.geometric(0.3, 500) - 1
    data, n = B.pack_unary(u)
    assert n == u.sum() + u.size and (B.unpack_unary(data, n, u.size) == u).all()
    widths = rng.integers(0, 17, 300)
    vals = rng.integers(0, 2**16, 300) & ((1 << widths) - 1)
    data, n = B.pack_varwidth(vals, widths)
    offsets = np.cumsum(widths) - widths
    assert (B.read_varwidth(np.unpackbits(data, count=n), offsets, widths) == vals).all()
    x = np.array([0, 1, 2, 3, 4, 7, 8, 2**40 - 1, 2**40])
    assert B.bit_length(x).tolist() == [int(i).bit_length() for i in x]
    with pytest.raises(ValueError, match="does not fit"):
        B.pack_fixed(np.array([8]), 3)


@pytest.mark.parametrize("vocab, k", [(320, 12), (49152, 50), (7, 7)])
def test_sorted_id_sets_round_trip(vocab, k):
    rng = np.random.default_rng(vocab)
    ids = np.sort(np.stack([rng.choice(vocab, k, replace=False, p=None) for _ in range(200)]), 1)
    active = np.ones(ids.shape, bool)
    assert (codec.decode_ids(codec.encode_ids(ids, active), active) == ids).all()
    ragged = np.arange(k)[None] < rng.integers(1, k + 1, 200)[:, None]  # sampled mode: a prefix per row
    back = codec.decode_ids(codec.encode_ids(np.where(ragged, ids, 0), ragged), ragged)
    assert (back[ragged] == ids[ragged]).all()


def test_value_levels_are_lossless_and_quantisation_error_is_bounded():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.full(41, 0.1), 500)  # 40 "top-k" probabilities and a rest bucket per row
    for bits in (4, 6, 8):
        levels = codec.quantise(p, bits)
        assert (codec.decode_levels(codec.encode_levels(levels), 500, 40) == levels).all()
        q = codec.dequantise(levels)
        assert (q > 0).all() and np.allclose(q.sum(1), 1)
        kl = (p * (np.log(np.maximum(p, 1e-300)) - np.log(q))).sum(1)
        # sqrt(p) is rounded to a step of 2^-bits: KL ~ 2 Σ (Δ sqrt p)^2 <= 2 * 41 * (2^-bits / 2)^2, and a
        # uniform rounding error averages a third of that
        assert kl.max() < 41 * 0.5 * 4.0**-bits * 1.5
        assert kl.mean() < 41 * 0.5 * 4.0**-bits / 3 * 1.5
