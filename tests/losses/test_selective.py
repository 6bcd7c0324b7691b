"""Selective distillation against the guide's formula, made per token."""
import math

import pytest
import torch
import torch.nn.functional as F

from kdistill.losses import DenseSignal, SparseSignal
from kdistill.losses import divergences as D
from kdistill.losses.selective import selective

from .references import logits


def guide_per_token(student_logits, teacher_logits, temperature, top_k, threshold):
    """SelectiveTokenDistillation of the guide, without its mean over kept positions."""
    p = F.softmax(teacher_logits / temperature, -1)
    keep = -(p * p.log()).sum(-1) > threshold
    top_p, top_ids = p.topk(top_k, -1)
    top_p = top_p / top_p.sum(-1, keepdim=True)
    log_q = F.log_softmax(student_logits.gather(-1, top_ids) / temperature, -1)
    return torch.where(keep, (top_p * (top_p.log() - log_q)).sum(-1), 0.0), keep


def test_matches_guide_formula_on_odd_shape():
    s, t = logits(3, 47, 123).requires_grad_(), logits(3, 47, 123, seed=1, scale=2.0)
    ref, keep = guide_per_token(s, t, 2.0, 10, 4.4)
    assert 0 < keep.sum() < keep.numel()  # the threshold splits the positions
    ours = selective(s, t, 2.0, top_k=10, entropy_threshold=4.4)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(torch.autograd.grad(ours.sum(), s)[0], torch.autograd.grad(ref.sum(), s)[0])


def test_gradcheck():
    s, t = logits(2, 3, 11).requires_grad_(), logits(2, 3, 11, seed=1)
    assert torch.autograd.gradcheck(lambda x: selective(x, t, 1.5, "jsd", 4, 0.0, beta=0.3), (s,))


def test_full_top_k_and_zero_threshold_is_the_plain_divergence():
    s, t = logits(2, 5, 19), logits(2, 5, 19, seed=1)
    for name in ("forward_kl", "reverse_kl", "tvd"):
        torch.testing.assert_close(selective(s, t, 1.3, name, top_k=19, entropy_threshold=0.0),
                                   D.divergence(name, s, t, 1.3))


def test_confident_teacher_positions_count_zero():
    s, t = logits(2, 5, 19), logits(2, 5, 19, seed=1)
    assert (selective(s, t, 1.0, top_k=5, entropy_threshold=1e9) == 0).all()


def test_sparse_teacher_and_neg_inf_are_safe():
    s, t = logits(2, 5, 19).requires_grad_(), logits(2, 5, 19, seed=1)
    t[..., :4] = float("-inf")
    for teacher in (DenseSignal(logits=t), SparseSignal.from_logits(t, 8)):
        value = selective(s, teacher, 2.0, top_k=17, entropy_threshold=0.1)
        assert torch.isfinite(value).all() and torch.isfinite(torch.autograd.grad(value.sum(), s)[0]).all()
    torch.testing.assert_close(selective(s, SparseSignal.from_logits(t, 19), 2.0, top_k=6, entropy_threshold=0.0),
                               selective(s, t, 2.0, top_k=6, entropy_threshold=0.0))


def test_golden_value():
    """Teacher [.7, .2, .1], student [.2, .5, .3], top-2 renormalised: p' = [7/9, 2/9], q' = [2/7, 5/7]."""
    p = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    q = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    value = selective(q.log(), p.log(), top_k=2, entropy_threshold=0.5).item()  # H(p) = 0.80 nats > 0.5
    assert value == pytest.approx(7 / 9 * math.log(49 / 18) + 2 / 9 * math.log(14 / 45), rel=1e-12)
    assert value == pytest.approx(0.5194366067990124, rel=1e-12)
    assert selective(q.log(), p.log(), top_k=2, entropy_threshold=0.81).item() == 0.0


def test_the_share_of_kept_positions_and_the_entropy_temperature_are_logged_per_token():
    from kdistill.losses import build_objective

    s, t = logits(3, 47, 123), logits(3, 47, 123, seed=1, scale=2.0)
    _, keep = guide_per_token(s, t, 2.0, 10, 4.4)
    objective = build_objective([{"kind": "selective", "top_k": 10, "entropy_threshold": 4.4, "temperature": 2.0},
                                 {"kind": "forward_kl", "temperature": {"schedule": "entropy", "confident": 0.5,
                                                                        "uncertain": 2.0}}])
    mask = torch.ones(3, 47, dtype=torch.bool)
    out = objective.from_logits(s, DenseSignal(logits=t), None, mask, mask.sum())
    assert out.terms["kept/selective"] == pytest.approx(keep.float().mean().item(), abs=1e-6)
    mean_t = out.terms["temperature/forward_kl"]
    assert 0.5 < mean_t < 2.0
    halves = [objective.from_logits(s[i:i + 1], DenseSignal(logits=t[i:i + 1]), None, mask[i:i + 1], mask.sum())
              for i in range(3)]  # split into micro-batches: the sums are the whole batch's means
    assert sum(h.terms["kept/selective"] for h in halves) == pytest.approx(out.terms["kept/selective"], abs=1e-6)
    assert sum(h.terms["temperature/forward_kl"] for h in halves) == pytest.approx(mean_t, abs=1e-6)
