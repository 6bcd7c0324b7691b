"""Every divergence against a plain float64 formula of its own: values, gradients, edge cases, golden values."""
import math

import pytest
import torch
import torch.nn.functional as F

from kdistill.losses import divergences as D

from .references import NAMES, PARAMS, logits, reference


@pytest.mark.parametrize("name", NAMES)
def test_matches_reference_on_odd_shape_values_and_gradients(name):
    s, t = logits(3, 47, 123).requires_grad_(), logits(3, 47, 123, seed=1)
    ours = D.divergence(name, s, t, 1.7, **PARAMS.get(name, {}))
    ref = reference(name, s, t, 1.7, **PARAMS.get(name, {}))
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    weights = logits(3, 47, seed=2)
    (g_ours,) = torch.autograd.grad((ours * weights).sum(), s)
    (g_ref,) = torch.autograd.grad((ref * weights).sum(), s)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck(name):
    s, t = logits(2, 3, 11).requires_grad_(), logits(2, 3, 11, seed=1)
    assert torch.autograd.gradcheck(lambda x: D.divergence(name, x, t, 2.0, **PARAMS.get(name, {})), (s,))


@pytest.mark.parametrize("name", NAMES)
def test_identical_inputs_give_zero(name):
    s = logits(4, 5, 17)
    torch.testing.assert_close(D.divergence(name, s, s.clone(), 1.3), torch.zeros(4, 5, dtype=s.dtype),
                               atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_neg_inf_teacher_logits_are_outside_the_support(name):
    """Padding the vocabulary with -inf teacher logits changes no value and gives finite gradients."""
    s, t = logits(3, 4, 29).requires_grad_(), logits(3, 4, 29, seed=1)
    pad = torch.full((3, 4, 7), float("-inf"), dtype=t.dtype)
    t_padded = torch.cat([t, pad], -1)
    s_padded = torch.cat([s, logits(3, 4, 7, seed=5)], -1)
    t_holes = t_padded.clone()
    t_holes[0, 0, :5] = float("-inf")  # -inf inside the real vocabulary too
    for teacher in (t_padded, t_holes):
        value = D.divergence(name, s_padded, teacher, 2.0, **PARAMS.get(name, {}))
        (grad,) = torch.autograd.grad(value.sum(), s)
        assert torch.isfinite(value).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(D.divergence(name, s_padded, t_padded, 2.0, **PARAMS.get(name, {})),
                               D.divergence(name, s, t, 2.0, **PARAMS.get(name, {})))


def test_per_token_temperature_equals_rowwise_scalar():
    s, t = logits(2, 3, 13), logits(2, 3, 13, seed=1)
    temps = torch.tensor([[1.0, 2.0, 3.5], [0.5, 1.0, 4.0]], dtype=s.dtype)
    ours = D.jsd(s, t, temps, beta=0.4)
    rows = torch.stack([torch.stack([D.jsd(s[b, i], t[b, i], float(temps[b, i]), beta=0.4) for i in range(3)])
                        for b in range(2)])
    torch.testing.assert_close(ours, rows)


def test_forward_kl_matches_seed_reference_batchmean():
    s, t = logits(6, 50, seed=3).float(), logits(6, 50, seed=4).float()
    seed_style = F.kl_div(F.log_softmax(s / 2, -1), F.softmax(t / 2, -1), reduction="batchmean")
    torch.testing.assert_close(D.forward_kl(s, t, 2.0).mean(), seed_style)


def test_cross_entropy_matches_torch_with_label_smoothing():
    s, y = logits(3, 7, 19), torch.randint(0, 19, (3, 7))
    for eps in (0.0, 0.1):
        ours = D.cross_entropy(s, y, label_smoothing=eps)
        torch.testing.assert_close(ours, F.cross_entropy(s.reshape(-1, 19), y.reshape(-1), label_smoothing=eps,
                                                         reduction="none").reshape(3, 7))
    torch.testing.assert_close(D.cross_entropy(s, y, 2.0), F.cross_entropy(
        (s / 2).reshape(-1, 19), y.reshape(-1), reduction="none").reshape(3, 7))


# teacher p = [0.7, 0.2, 0.1], student q = [0.2, 0.5, 0.3]; each value is the formula worked by hand
GOLDEN = {
    ("forward_kl", ()): 0.5838147027051154,  # .7 ln(.7/.2) + .2 ln(.2/.5) + .1 ln(.1/.3)
    ("reverse_kl", ()): 0.5371764588384369,  # .2 ln(.2/.7) + .5 ln(.5/.2) + .3 ln(.3/.1)
    ("bidirectional_kl", (("forward_weight", 0.5), ("reverse_weight", 0.5))): 0.5604955807717762,
    ("jsd", (("beta", 0.9),)): 0.04786399422220181,  # m = .9 p + .1 q
    ("skew_forward_kl", (("alpha", 0.1),)): 0.44688858467748127,  # KL(p ‖ .1 p + .9 q)
    ("skew_reverse_kl", (("alpha", 0.1),)): 0.4274206150434152,  # KL(q ‖ .1 q + .9 p)
    ("tvd", ()): 0.5,  # ½ (.5 + .3 + .2)
}


@pytest.mark.parametrize("name,params", list(GOLDEN))
def test_golden_value(name, params):
    p = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    q = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    value = D.divergence(name, q.log() + 1.5, p.log() - 2.0, **dict(params))  # logits: any shift
    assert value.item() == pytest.approx(GOLDEN[(name, params)], rel=1e-12, abs=1e-15)


def test_golden_cross_entropy():
    q = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    value = D.cross_entropy(q.log(), torch.tensor(1), label_smoothing=0.1)
    expected = 0.9 * -math.log(0.5) + 0.1 * -(math.log(0.2) + math.log(0.5) + math.log(0.3)) / 3
    assert value.item() == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.7407177257479501, rel=1e-12)


def test_fp32_inside_for_half_inputs():
    s, t = logits(2, 3, 11).bfloat16(), logits(2, 3, 11, seed=1).bfloat16()
    value = D.reverse_kl(s, t)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, D.reverse_kl(s.float(), t.float()))


def test_cross_entropy_gradcheck_and_odd_shape_gradient():
    s, y = logits(3, 47, 123).requires_grad_(), torch.randint(0, 123, (3, 47))
    ours = D.cross_entropy(s, y, 1.5, 0.2)
    ref = F.cross_entropy((s / 1.5).reshape(-1, 123), y.reshape(-1), label_smoothing=0.2, reduction="none")
    torch.testing.assert_close(torch.autograd.grad(ours.sum(), s)[0], torch.autograd.grad(ref.sum(), s)[0])
    small = logits(2, 3, 11).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: D.cross_entropy(x, y[:2, :3] % 11, 2.0, 0.1), (small,))
