"""Sparse teacher signals: k = V equals dense, both missing-mass policies against plain formulas."""
import itertools

import pytest
import torch

from kdistill.losses import DenseSignal, SparseSignal
from kdistill.losses import divergences as D
from kdistill.losses.signals import entropy, pair_logprobs, teacher_logprobs

from .references import NAMES, PARAMS, logits, reference


@pytest.mark.parametrize("missing", ["renormalize", "residual"])
@pytest.mark.parametrize("name", NAMES)
def test_sparse_with_k_equal_v_equals_dense(name, missing):
    s, t = logits(3, 5, 31).requires_grad_(), logits(3, 5, 31, seed=1)
    sparse = D.divergence(name, s, SparseSignal.from_logits(t, 31), 1.6, missing, **PARAMS.get(name, {}))
    dense = D.divergence(name, s, t, 1.6, **PARAMS.get(name, {}))
    torch.testing.assert_close(sparse, dense)
    torch.testing.assert_close(torch.autograd.grad(sparse.sum(), s)[0], torch.autograd.grad(dense.sum(), s)[0])


@pytest.mark.parametrize("name", NAMES)
def test_renormalize_is_the_divergence_on_the_k_ids(name):
    s, t = logits(2, 4, 40).requires_grad_(), logits(2, 4, 40, seed=1)
    signal = SparseSignal.from_logits(t, 6)
    ours = D.divergence(name, s, signal, 2.0, "renormalize", **PARAMS.get(name, {}))
    ref = reference(name, s.gather(-1, signal.ids), signal.logprobs, 2.0, **PARAMS.get(name, {}))
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("name", NAMES)
def test_residual_is_the_divergence_on_k_plus_one_buckets(name):
    s, t = logits(2, 4, 40).requires_grad_(), logits(2, 4, 40, seed=1)
    signal = SparseSignal.from_logits(t, 6)
    q = s.softmax(-1)
    q_k = q.gather(-1, signal.ids)
    p_k = signal.logprobs.exp()
    student = torch.cat([q_k, 1 - q_k.sum(-1, keepdim=True)], -1).log()  # bucket = all other ids
    teacher = torch.cat([p_k, 1 - p_k.sum(-1, keepdim=True)], -1).log()
    ours = D.divergence(name, s, signal, 2.0, "residual", **PARAMS.get(name, {}))
    ref = reference(name, student, teacher, 2.0, **PARAMS.get(name, {}))
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(torch.autograd.grad(ours.sum(), s)[0], torch.autograd.grad(ref.sum(), s)[0])


def test_sampled_counts_are_the_empirical_distribution_under_both_policies():
    s = logits(1, 2, 20)
    ids = torch.tensor([[[3, 7, 11, 0], [5, 2, 9, 1]]])
    counts = torch.tensor([[[5, 3, 2, 0], [8, 1, 1, 0]]])  # a zero count pads the slot
    signal = SparseSignal.from_counts(ids, counts)
    torch.testing.assert_close(signal.logprobs.exp(), torch.tensor([[[.5, .3, .2, 0], [.8, .1, .1, 0]]]))
    a = D.divergence("forward_kl", s, signal, missing="renormalize")
    b = D.divergence("forward_kl", s, signal, missing="residual")
    torch.testing.assert_close(a, b.to(a.dtype))
    q = s.gather(-1, ids[..., :3]).log_softmax(-1)
    p = (counts[..., :3].double() / 10)
    torch.testing.assert_close(a, (p * (p.log() - q)).sum(-1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_k_probabilities_summing_to_one_up_to_rounding_leave_no_bucket(dtype):
    """Rounding must not decide the residual policy: both policies agree for every nearby sum."""
    s = logits(1, 3, 20)
    ids = torch.tensor([[[3, 7, 11], [5, 2, 9], [1, 4, 6]]])
    probs = torch.tensor([[[.5, .3, .2], [.7, .2, .1], [.6, .3, .1]]], dtype=dtype)
    eps = torch.finfo(dtype).eps
    for nudge in (-2 * eps, 0.0, 2 * eps):  # sums a few ulps either side of 1
        signal = SparseSignal(ids=ids, logprobs=(probs * (1 + nudge)).log())
        a = D.divergence("forward_kl", s, signal, missing="renormalize")
        b = D.divergence("forward_kl", s, signal, missing="residual")
        torch.testing.assert_close(b.to(a.dtype), a)
    # a real rest mass stays a bucket
    signal = SparseSignal(ids=ids, logprobs=(probs * 0.9).log())
    assert not torch.allclose(D.divergence("forward_kl", s, signal, missing="residual"),
                              D.divergence("forward_kl", s, signal, missing="renormalize"))


def test_padded_slots_with_repeated_ids_are_ignored():
    s, t = logits(2, 3, 30).requires_grad_(), logits(2, 3, 30, seed=1)
    signal = SparseSignal.from_logits(t, 5)
    padded = SparseSignal(ids=torch.cat([signal.ids, signal.ids[..., :2]], -1),
                          logprobs=torch.cat([signal.logprobs, torch.full((2, 3, 2), float("-inf"),
                                                                          dtype=t.dtype)], -1))
    for missing in ("renormalize", "residual"):
        for name in NAMES:
            value = D.divergence(name, s, padded, 1.5, missing, **PARAMS.get(name, {}))
            torch.testing.assert_close(value, D.divergence(name, s, signal, 1.5, missing, **PARAMS.get(name, {})))
            assert torch.isfinite(torch.autograd.grad(value.sum(), s)[0]).all()


def test_take_selects_flattened_rows_and_from_hidden_matches_logits():
    hidden, weight = logits(2, 3, 4), logits(9, 4, seed=1)
    rows = torch.tensor([4, 0, 5])
    a = DenseSignal.from_hidden(hidden, weight).take(rows).logits
    torch.testing.assert_close(a, (hidden @ weight.T).reshape(6, 9)[rows])
    sparse = SparseSignal.from_logits(hidden @ weight.T, 3).take(rows)
    assert sparse.ids.shape == (3, 3) and sparse.k == 3


def test_signal_validation():
    with pytest.raises(ValueError):
        DenseSignal()
    with pytest.raises(ValueError):
        SparseSignal(ids=torch.zeros(2, 3), logprobs=torch.zeros(2, 3))


def test_teacher_entropy_and_pair_shapes():
    t = torch.tensor([[0.0, 0.0, float("-inf"), 0.0]])
    assert entropy(teacher_logprobs(DenseSignal(logits=t))).item() == pytest.approx(torch.log(torch.tensor(3.)))
    s_lp, t_lp = pair_logprobs(torch.zeros(1, 4), SparseSignal.from_logits(t, 2), missing="residual")
    assert s_lp.shape == t_lp.shape == (1, 3)


def test_take_rows_of_a_non_contiguous_view():
    full = logits(2, 5, 7)
    view = full[:, :-1]  # (2, 4, 7), not contiguous
    rows = torch.tensor([7, 0, 3, 4])
    torch.testing.assert_close(DenseSignal(logits=view).take(rows).logits, view.reshape(8, 7)[rows])


def _masked_rest(logits, ids, teacher_lp):
    """Reference: the student's log-mass outside the finite-teacher ids, by masking probabilities."""
    probs = logits.softmax(-1)
    keep = torch.ones_like(probs, dtype=torch.bool)
    for idx in itertools.product(*map(range, ids.shape[:-1])):
        for slot in range(ids.shape[-1]):
            if torch.isfinite(teacher_lp[idx + (slot,)]):
                keep[idx + (ids[idx + (slot,)],)] = False
    return torch.where(keep, probs, 0.0).sum(-1, keepdim=True).log()


@pytest.mark.parametrize("peak", [0.0, 12.0, 40.0])  # 12, 40: some rows' rest mass < 2^-10 (exact branch)
def test_student_sparse_logprobs_equal_masking_in_values_and_gradients(peak):
    from kdistill.losses.signals import EXACT_REST_BELOW, student_sparse_logprobs

    g = torch.Generator().manual_seed(3)
    V, K = 37, 5
    logits = torch.randn(2, 3, V, generator=g, dtype=torch.float64)
    ids = torch.stack([torch.randperm(V, generator=g)[:K] for _ in range(6)]).reshape(2, 3, K)
    teacher_lp = torch.randn(2, 3, K, generator=g, dtype=torch.float64) - 3
    teacher_lp[0, 1, -2:] = float("-inf")  # padded slots: their ids must not count
    ids[0, 1, -1] = ids[0, 1, 0]
    rise = torch.linspace(0, peak, 6, dtype=torch.float64).reshape(2, 3, 1).expand(2, 3, 2)  # peak grows by row
    logits = logits.scatter_add(-1, ids[..., :2], rise)
    logits.requires_grad_()
    at_ids, rest = student_sparse_logprobs(logits, ids, teacher_lp)
    want_rest = _masked_rest(logits, ids, teacher_lp)
    want_at = logits.log_softmax(-1).gather(-1, ids)
    if peak > 0:
        assert (want_rest.exp() < EXACT_REST_BELOW).any() and (want_rest.exp() > EXACT_REST_BELOW).any()
    torch.testing.assert_close(at_ids, want_at)
    torch.testing.assert_close(rest, want_rest)
    w = torch.randn(2, 3, K + 1, generator=g, dtype=torch.float64)
    got = torch.autograd.grad((torch.cat([at_ids, rest], -1) * w).sum(), logits)[0]
    want = torch.autograd.grad((torch.cat([want_at, want_rest], -1) * w).sum(), logits)[0]
    torch.testing.assert_close(got, want)


def test_student_rest_in_fp32_is_finite_and_close_when_the_student_is_certain():
    from kdistill.losses.signals import student_sparse_logprobs

    logits = torch.zeros(4, 1000)
    ids = torch.arange(8).expand(4, 8).contiguous()
    logits[:, 0] = torch.tensor([5.0, 15.0, 25.0, 40.0])  # rest mass from ~0.87 down to ~4e-15
    teacher_lp = torch.full((4, 8), -3.0)
    at_ids, rest = student_sparse_logprobs(logits.requires_grad_(), ids, teacher_lp)
    want = _masked_rest(logits.double(), ids, teacher_lp.double())
    torch.testing.assert_close(rest.double(), want, rtol=0, atol=1e-5)
    (grad,) = torch.autograd.grad(rest.sum() + at_ids.sum(), logits)
    assert torch.isfinite(grad).all()
