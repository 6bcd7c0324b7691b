"""reverse_kl_pg: its expected gradient is the reverse KL's, checked by exact enumeration of every outcome."""
import itertools

import pytest
import torch

from kdistill.base.errors import ConfigError
from kdistill.losses import build_objective
from kdistill.losses.divergences import reverse_kl
from kdistill.losses.policy import future_rewards, reverse_kl_pg

V = 5
NO_CLIP = {"advantage_clip": 1e6, "ratio_clip": 1e6}


def _logits(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _grad(fn, theta):
    theta = theta.detach().clone().requires_grad_()
    fn(theta).backward()
    return theta.grad


def test_expected_gradient_is_the_reverse_kl_gradient():
    theta, teacher = _logits(0, V), _logits(1, V)
    q = theta.softmax(-1)
    expected = sum(q[y] * _grad(lambda t: reverse_kl_pg(t[None], teacher[None], torch.tensor([y]),
                                                        advantage_clip=1e6).sum(), theta) for y in range(V))
    torch.testing.assert_close(expected, _grad(lambda t: reverse_kl(t, teacher), theta), rtol=1e-10, atol=1e-12)


def test_importance_ratio_corrects_another_sampler():
    theta, teacher, sampler = _logits(2, V), _logits(3, V), _logits(4, V)
    mu = sampler.log_softmax(-1)
    expected = sum(mu[y].exp() * _grad(lambda t: reverse_kl_pg(t[None], teacher[None], torch.tensor([y]),
                                                               behaviour=mu[y][None], **NO_CLIP).sum(), theta)
                   for y in range(V))
    torch.testing.assert_close(expected, _grad(lambda t: reverse_kl(t, teacher), theta), rtol=1e-10, atol=1e-12)


def test_through_the_fused_objective_and_the_token_count():
    """One position, the term in the chunked objective: Σ_y q(y) ∇loss(y) = ∇ reverse KL (head and hidden)."""
    d = 4
    hidden, weight, teacher = _logits(5, 1, 1, d), _logits(6, V, d), _logits(7, 1, 1, V)
    pg = build_objective([{"kind": "reverse_kl_pg", **NO_CLIP}], chunk_size=1)
    ref = build_objective([{"kind": "reverse_kl"}])
    mask = torch.ones(1, 1, dtype=torch.bool)

    def grads(objective, y, tokens=1):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        objective(h, w, _dense(teacher), torch.tensor([[y]]), mask, tokens).loss.backward()
        return h.grad, w.grad

    q = (hidden[0, 0] @ weight.T).softmax(-1)
    per_outcome = [grads(pg, y) for y in range(V)]
    total = [sum(q[y] * per_outcome[y][i] for y in range(V)) for i in range(2)]
    for got, want in zip(total, grads(ref, 0)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    h, w = grads(pg, 1, tokens=4)  # the global token count divides like every other term
    torch.testing.assert_close(h * 4, grads(pg, 1)[0])


def _dense(logits):
    from kdistill.losses import DenseSignal

    return DenseSignal(logits=logits)


def _sequence_grads(gamma, normalize, fused):
    """Two sampled tokens, the second's distribution depending on the first: every outcome enumerated.

    Returns (Σ_y q(y) ∇loss(y), the student's parameters, q's tables) with parameters h1 (D,), h2 (V, D)
    (the hidden state before y2 depends on y1), w (V, D); the teacher's tables are fixed."""
    d = 3
    h1, h2, w = _logits(8, d).requires_grad_(), _logits(9, V, d).requires_grad_(), _logits(10, V, d).requires_grad_()
    t1, t2 = _logits(11, V), _logits(12, V, V)
    objective = build_objective([{"kind": "reverse_kl_pg", "gamma": gamma, "normalize": normalize, **NO_CLIP}],
                                chunk_size=1)
    mask = torch.ones(1, 2, dtype=torch.bool)
    q1 = (h1 @ w.T).softmax(-1).detach()
    total = 0.0
    for y1, y2 in itertools.product(range(V), repeat=2):
        hidden = torch.stack([h1, h2[y1]])[None]
        teacher = _dense(torch.stack([t1, t2[y1]])[None])
        targets = torch.tensor([[y1, y2]])
        if fused:
            loss = objective(hidden, w, teacher, targets, mask, 1).loss
        else:
            loss = objective.from_logits(hidden @ w.T, teacher, targets, mask, 1).loss
        q2 = (h2[y1] @ w.T).softmax(-1).detach()
        total = total + q1[y1] * q2[y2] * loss
    grads = torch.autograd.grad(total, (h1, h2, w))
    return grads, (h1, h2, w), (t1, t2)


def _sequence_kl(params, teachers, per_token_prefix_fixed):
    h1, h2, w = params
    t1, t2 = teachers
    lq1, lp1 = (h1 @ w.T).log_softmax(-1), t1.log_softmax(-1)
    total = (lq1.exp() * (lq1 - lp1)).sum()
    for y1 in range(V):
        lq2, lp2 = (h2[y1] @ w.T).log_softmax(-1), t2[y1].log_softmax(-1)
        kl2 = (lq2.exp() * (lq2 - lp2)).sum()
        if per_token_prefix_fixed:  # γ = 0: each position's KL, the prefix's probability held fixed
            total = total + lq1.exp()[y1].detach() * kl2
        else:  # γ = 1: the KL of whole sequences, KL(q(y1, y2) ‖ p(y1, y2))
            total = total + lq1.exp()[y1] * kl2
    return total


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "from_logits"])
def test_gamma_one_is_the_sequence_kl_gradient(fused):
    grads, params, teachers = _sequence_grads(1.0, False, fused)
    want = torch.autograd.grad(_sequence_kl(params, teachers, False), params)
    for g, e in zip(grads, want):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)


def test_gamma_zero_is_the_per_token_kl_gradient():
    grads, params, teachers = _sequence_grads(0.0, True, True)
    want = torch.autograd.grad(_sequence_kl(params, teachers, True), params)
    for g, e in zip(grads, want):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)


def test_discount_and_normalisation():
    r = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    full = torch.ones(2, 4, dtype=torch.bool)
    gaps = torch.tensor([[True, False, True, True], [False, False, False, True]])
    torch.testing.assert_close(future_rewards(r, full, 0.5, False)[0], torch.tensor([4.5, 5.0, 4.0, 0.0]))
    torch.testing.assert_close(future_rewards(r, full, 0.5, True)[0], torch.tensor([4.5 / 1.75, 5 / 1.5, 4.0, 0.0]))
    torch.testing.assert_close(future_rewards(r, full, 1.0, True)[0], torch.tensor([3.0, 3.5, 4.0, 0.0]))
    # unmasked positions are skipped (a later masked token is the next one), and rows never mix
    torch.testing.assert_close(future_rewards(r, gaps, 0.5, False), torch.tensor([[5.0, 0, 4, 0], [0, 0, 0, 0]]))


def test_gamma_zero_ignores_the_future_and_clips_bound():
    s, t = _logits(13, 3, V), _logits(14, 3, V)
    y = torch.tensor([0, 1, 2])
    base = reverse_kl_pg(s, t, y)
    torch.testing.assert_close(reverse_kl_pg(s, t, y, future=torch.full((3,), 9.0), gamma=0.0), base)
    lq, lp = s.log_softmax(-1)[range(3), y], t.log_softmax(-1)[range(3), y]
    torch.testing.assert_close(base, lq - lp)  # the value is the per-token sample of KL(q ‖ p)
    clipped = reverse_kl_pg(s, t, y, advantage_clip=0.01)
    assert clipped.abs().max() <= 0.01 + 1e-12
    stale = reverse_kl_pg(s, t, y, behaviour=lq - 5.0, ratio_clip=2.0)  # ratio e^5 clipped to 2
    torch.testing.assert_close(stale, 2 * base)


def test_zero_tokens_give_zero_not_nan():
    hidden = _logits(15, 2, 3, 4).requires_grad_()
    weight = _logits(16, V, 4).requires_grad_()
    objective = build_objective([{"kind": "reverse_kl_pg", "gamma": 0.9}])
    out = objective(hidden, weight, _dense(_logits(17, 2, 3, V)), torch.zeros(2, 3, dtype=torch.long),
                    torch.zeros(2, 3, dtype=torch.bool), 0)
    out.loss.backward()
    assert out.loss.item() == 0.0 and torch.isfinite(weight.grad).all() and out.terms["reverse_kl_pg"] == 0.0


def test_config_keys_are_checked():
    with pytest.raises(ConfigError, match=r"terms\[0\].gamma"):
        build_objective([{"kind": "reverse_kl_pg", "gamma": 1.5}])
    with pytest.raises(ConfigError, match=r"terms\[0\].normalize"):
        build_objective([{"kind": "reverse_kl_pg", "normalize": "yes"}])
    with pytest.raises(ConfigError, match=r"terms\[0\].beta: unknown key"):
        build_objective([{"kind": "reverse_kl_pg", "beta": 0.5}])
    with pytest.raises(ConfigError, match="temperature.schedule"):
        build_objective([{"kind": "reverse_kl_pg", "temperature": {"schedule": "entropy", "confident": 1,
                                                                   "uncertain": 2}}])
