"""The fused, chunked output layer equals plain autograd on full logits, for every term and teacher type."""
import pytest
import torch

from kdistill.losses import DenseSignal, SparseSignal, build_objective
from kdistill.losses.fused.chunked import auto_chunk_size, fused_linear_loss

B, T, D, V = 3, 7, 16, 53
TERMS = {
    "forward_kl": {"temperature": 2.0},
    "reverse_kl": {"temperature": 0.7},
    "bidirectional_kl": {"forward_weight": 0.3, "reverse_weight": 1.0},
    "jsd": {"beta": 0.3, "temperature": 1.5},
    "skew_forward_kl": {"alpha": 0.2},
    "skew_reverse_kl": {"alpha": 0.2},
    "tvd": {},
    "selective": {"top_k": 9, "entropy_threshold": 2.0, "temperature": 2.0},
    "ce": {"label_smoothing": 0.1},
}


def inputs(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, D, generator=g, dtype=dtype)
    weight = torch.randn(V, D, generator=g, dtype=dtype) / 2
    teacher_hidden = torch.randn(B, T, 12, generator=g, dtype=dtype)
    teacher_weight = torch.randn(V, 12, generator=g, dtype=dtype)
    targets = torch.randint(0, V, (B, T), generator=g)
    mask = torch.rand(B, T, generator=g) > 0.3
    return hidden, weight, teacher_hidden, teacher_weight, targets, mask


def teachers(teacher_hidden, teacher_weight):
    logits = teacher_hidden @ teacher_weight.T
    logits[..., -3:] = float("-inf")  # a padded vocabulary
    return {"dense": DenseSignal(logits=logits),
            "hidden": DenseSignal.from_hidden(teacher_hidden, teacher_weight),
            "sparse": SparseSignal.from_logits(logits, 11),
            "sparse_residual": SparseSignal.from_logits(logits, 11)}


def run(objective, hidden, weight, teacher, targets, mask, fused=True):
    hidden, weight = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    n = int(mask.sum())
    if fused:
        out = objective(hidden, weight, teacher, targets, mask, n, progress=0.3)
    else:
        out = objective.from_logits(hidden @ weight.T, teacher, targets, mask, n, progress=0.3)
    out.loss.backward()
    return out, hidden.grad, weight.grad


@pytest.mark.parametrize("teacher_kind", ["dense", "hidden", "sparse", "sparse_residual"])
@pytest.mark.parametrize("kind", list(TERMS))
def test_chunked_equals_dense_values_and_gradients(kind, teacher_kind):
    hidden, weight, th, tw, targets, mask = inputs()
    missing = {"missing_mass": "residual"} if teacher_kind == "sparse_residual" and kind != "ce" else {}
    spec = [{"kind": kind, "weight": 0.7, **TERMS[kind], **missing}]
    teacher = teachers(th, tw)[teacher_kind]
    dense = run(build_objective(spec), hidden, weight, teacher, targets, mask, fused=False)
    for chunk_size in (1, 4, 1000):
        out, g_hidden, g_weight = run(build_objective(spec, chunk_size=chunk_size), hidden, weight, teacher,
                                      targets, mask)
        torch.testing.assert_close(out.loss, dense[0].loss, atol=1e-5, rtol=1e-5)
        assert out.terms == pytest.approx(dense[0].terms, abs=1e-5)
        torch.testing.assert_close(g_hidden, dense[1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(g_weight, dense[2], atol=1e-5, rtol=1e-5)
        assert torch.isfinite(out.loss) and torch.isfinite(g_hidden).all() and torch.isfinite(g_weight).all()


def test_gradient_accumulation_invariance():
    """Micro-batch losses and gradients, each divided by the global count, sum to the full batch's."""
    hidden, weight, th, tw, targets, mask = inputs()
    objective = build_objective([{"kind": "forward_kl", "temperature": 2.0}, {"kind": "ce", "weight": 0.5},
                                 {"kind": "selective", "top_k": 5, "entropy_threshold": 1.0}], chunk_size=5)
    teacher = DenseSignal(logits=th @ tw.T)
    n = int(mask.sum())
    full = run(objective, hidden, weight, teacher, targets, mask)
    w = weight.clone().requires_grad_()
    loss, terms, grads = 0.0, {}, []
    for part in (slice(0, 1), slice(1, 3)):  # unequal micro-batches
        h = hidden[part].clone().requires_grad_()
        out = objective(h, w, DenseSignal(logits=teacher.logits[part]), targets[part], mask[part], n)
        out.loss.backward()
        loss, grads = loss + out.loss.detach(), grads + [h.grad]
        terms = {k: terms.get(k, 0.0) + v for k, v in out.terms.items()}
    torch.testing.assert_close(loss, full[0].loss.detach())
    assert terms == pytest.approx(full[0].terms, abs=1e-6)
    torch.testing.assert_close(torch.cat(grads), full[1])
    torch.testing.assert_close(w.grad, full[2])


def test_all_masked_gives_zero_not_nan():
    hidden, weight, th, tw, targets, _ = inputs()
    objective = build_objective([{"kind": "jsd"}, {"kind": "ce"}])
    out, g_hidden, g_weight = run(objective, hidden, weight, DenseSignal(logits=th @ tw.T), targets,
                                  torch.zeros(B, T, dtype=torch.bool))
    assert out.loss.item() == 0.0 and out.terms == {"jsd": 0.0, "ce": 0.0}
    assert (g_hidden == 0).all() and (g_weight == 0).all()


def test_fused_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(9, 4, dtype=torch.float64, generator=g, requires_grad=True)
    teacher = torch.randn(5, 9, dtype=torch.float64, generator=g)

    def chunk_loss(logits, rows):
        p = teacher[rows].softmax(-1)
        return (p * (p.log() - logits.log_softmax(-1))).sum() / 5

    assert torch.autograd.gradcheck(lambda h, w: fused_linear_loss(h, w, chunk_loss, 2), (hidden, weight))


def test_bfloat16_inputs_compute_in_fp32():
    hidden, weight, th, tw, targets, mask = inputs(torch.bfloat16)
    objective = build_objective([{"kind": "forward_kl"}], chunk_size=4)
    out, g_hidden, g_weight = run(objective, hidden, weight, DenseSignal.from_hidden(th, tw), targets, mask)
    ref = run(objective, hidden.float(), weight.float(), DenseSignal.from_hidden(th, tw), targets, mask)
    assert out.loss.dtype == torch.float32 and g_hidden.dtype == g_weight.dtype == torch.bfloat16
    assert out.loss.item() == pytest.approx(ref[0].loss.item(), rel=0.05)


def test_no_grad_inputs_skip_backward_work():
    hidden, weight, th, tw, targets, mask = inputs()
    out = build_objective([{"kind": "tvd"}])(hidden, weight, DenseSignal(logits=th @ tw.T), targets, mask, 4)
    assert not out.loss.requires_grad and out.loss.item() > 0


def test_auto_chunk_size_fits_budget_and_override_wins():
    rows = auto_chunk_size(49152, 256.0, ["forward_kl"])
    assert 8 <= rows and rows * 49152 * 4 * 9 <= 256 * 2**20
    assert auto_chunk_size(1000, 256.0, ["forward_kl", "ce"]) > rows
    assert auto_chunk_size(10**7, 1.0, ["forward_kl"]) == 1
    assert build_objective([{"kind": "ce"}], chunk_size=3).chunk_size_for(49152) == 3
    kd_ce = build_objective([{"kind": "jsd"}, {"kind": "ce"}])
    assert kd_ce.chunk_size_for(49152, sparse=True) > kd_ce.chunk_size_for(49152)  # no teacher (rows x V) logits
    ce = build_objective([{"kind": "ce"}])
    assert ce.chunk_size_for(49152, sparse=True) == ce.chunk_size_for(49152)


def test_mixed_dtypes_autocast_hidden_with_fp32_head():
    hidden, weight, th, tw, targets, mask = inputs()
    objective = build_objective([{"kind": "reverse_kl"}], chunk_size=4)
    teacher = DenseSignal.from_hidden(th.bfloat16(), tw)
    out, g_hidden, g_weight = run(objective, hidden.bfloat16(), weight, teacher, targets, mask)
    ref = run(objective, hidden.bfloat16().float(), weight, teacher, targets, mask)
    assert g_hidden.dtype == torch.bfloat16 and g_weight.dtype == torch.float32
    torch.testing.assert_close(out.loss, ref[0].loss)
    torch.testing.assert_close(g_weight, ref[2])


def test_scaled_and_repeated_backward():
    hidden, weight, th, tw, targets, mask = inputs()
    objective = build_objective([{"kind": "forward_kl"}], chunk_size=4)
    teacher = DenseSignal(logits=th @ tw.T)
    _, g_hidden, g_weight = run(objective, hidden, weight, teacher, targets, mask)
    for first_scale in (3.0, 1.0):  # a loss scaler hands nothing over; a plain backward hands over .grad
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        out = objective(h, w, teacher, targets, mask, int(mask.sum()))
        (first_scale * out.loss).backward(retain_graph=True)
        out.loss.backward(retain_graph=True)
        torch.testing.assert_close(w.grad, (first_scale + 1) * g_weight)
        torch.testing.assert_close(h.grad, (first_scale + 1) * g_hidden)
    with pytest.raises(RuntimeError, match="compute the loss again"):
        out.loss.backward()  # w.grad is the handed-over tensor, changed by the second backward
