"""The closed-form chunk gradient (forward KL + CE on a dense teacher) equals the autograd path and the
plain full-logits reference: loss, logged terms, gradients of hidden and head weight, odd shapes."""
import pytest
import torch

from kdistill.losses import DenseSignal, SparseSignal, build_objective
from kdistill.losses.fused import closed_form

TERMS = {
    "default": [{"kind": "forward_kl", "weight": 1.0}, {"kind": "ce", "weight": 0.1}],
    "tempered+smoothing": [{"kind": "forward_kl", "weight": 0.5, "temperature": 2.0},
                           {"kind": "ce", "weight": 0.5, "label_smoothing": 0.1}],
    "two-temperatures": [{"kind": "forward_kl", "weight": 0.7, "temperature": 1.5},
                         {"kind": "ce", "weight": 0.3, "temperature": 0.8},
                         {"kind": "forward_kl", "name": "kl1", "weight": 0.2}],
    "scheduled": [{"kind": "forward_kl", "weight": {"schedule": "linear", "start": 1.0, "end": 0.2},
                   "temperature": {"schedule": "cosine", "start": 3.0, "end": 1.0}}],
    "kl-only": [{"kind": "forward_kl"}],
    "ce-only": [{"kind": "ce", "label_smoothing": 0.2}],
}


def inputs(seed: int, b: int = 3, t: int = 7, d: int = 11, v: int = 29, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, d, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(v, d, generator=g, dtype=dtype, requires_grad=True)
    teacher = torch.randn(b, t, v, generator=g, dtype=dtype) * 3
    targets = torch.randint(0, v, (b, t), generator=g)
    mask = torch.rand(b, t, generator=g) > 0.25
    return hidden, weight, teacher, targets, mask


def run(objective, hidden, weight, teacher, targets, mask, progress, num_tokens, closed: bool):
    objective.use_closed_form = closed
    h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    signal = None if not objective.needs_teacher else DenseSignal(logits=teacher)
    out = objective(h, w, signal, targets, mask, num_tokens, progress)
    out.loss.backward()
    return out.loss.item(), out.terms, h.grad, w.grad


@pytest.mark.parametrize("name", sorted(TERMS))
@pytest.mark.parametrize("t2_scale", [True, False])
@pytest.mark.parametrize("chunk,tile", [(1, 1 << 20), (4, 1 << 20), (100, 1 << 20), (100, 29 * 3), (7, 1)])
def test_equals_autograd_path_and_full_logits_reference(name, t2_scale, chunk, tile, monkeypatch):
    """tile: elements per tile of the elementwise passes (V = 29: whole chunks, 3 rows, 1 row)."""
    monkeypatch.setattr(closed_form, "TILE_ELEMENTS", tile)
    hidden, weight, teacher, targets, mask = inputs(seed=len(name) + chunk)
    objective = build_objective(TERMS[name], t2_scale=t2_scale, chunk_size=chunk)
    num_tokens = int(mask.sum()) + 3  # other micro-batches' tokens count too
    fast = run(objective, hidden, weight, teacher, targets, mask, 0.4, num_tokens, closed=True)
    slow = run(objective, hidden, weight, teacher, targets, mask, 0.4, num_tokens, closed=False)
    assert fast[0] == pytest.approx(slow[0], rel=1e-10)
    assert fast[1] == pytest.approx(slow[1], rel=1e-10)
    assert torch.allclose(fast[2], slow[2], rtol=1e-9, atol=1e-12)
    assert torch.allclose(fast[3], slow[3], rtol=1e-9, atol=1e-12)
    logits = (hidden @ weight.T)
    signal = None if not objective.needs_teacher else DenseSignal(logits=teacher)
    plain = objective.from_logits(logits, signal, targets, mask, num_tokens, 0.4)
    gh, gw = torch.autograd.grad(plain.loss, (hidden, weight))
    assert fast[0] == pytest.approx(plain.loss.item(), rel=1e-10)
    assert torch.allclose(fast[2], gh, rtol=1e-9, atol=1e-12) and torch.allclose(fast[3], gw, rtol=1e-9, atol=1e-12)


def test_tensor_token_count_and_fp32():
    hidden, weight, teacher, targets, mask = inputs(seed=5, dtype=torch.float32)
    objective = build_objective(TERMS["default"], chunk_size=5)
    count = torch.tensor(float(mask.sum()))
    fast = run(objective, hidden, weight, teacher, targets, mask, 0.0, count, closed=True)
    slow = run(objective, hidden, weight, teacher, targets, mask, 0.0, count, closed=False)
    assert fast[0] == pytest.approx(slow[0], rel=1e-5)
    assert torch.allclose(fast[2], slow[2], rtol=1e-4, atol=1e-6)
    assert torch.allclose(fast[3], slow[3], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["default", "two-temperatures", "tempered+smoothing"])
@pytest.mark.parametrize("tile", [1 << 20, 29 * 2])
def test_teacher_outside_its_support_equals_the_general_path(name, tile, monkeypatch):
    """-inf teacher logits (a padded vocabulary) in some rows only: the KL renormalises the student over
    the teacher's support, CE does not, in tiles with and without such ids."""
    monkeypatch.setattr(closed_form, "TILE_ELEMENTS", tile)
    hidden, weight, teacher, targets, mask = inputs(seed=9)
    teacher[0, :, -3:] = float("-inf")
    teacher[2, 1, :5] = float("-inf")
    objective = build_objective(TERMS[name], chunk_size=4)
    fast = run(objective, hidden, weight, teacher, targets, mask, 0.0, int(mask.sum()), closed=True)
    slow = run(objective, hidden, weight, teacher, targets, mask, 0.0, int(mask.sum()), closed=False)
    assert torch.isfinite(torch.tensor(fast[0])) and fast[0] == pytest.approx(slow[0], rel=1e-10)
    assert fast[1] == pytest.approx(slow[1], rel=1e-10)
    assert torch.allclose(fast[2], slow[2], rtol=1e-9, atol=1e-12)
    assert torch.allclose(fast[3], slow[3], rtol=1e-9, atol=1e-12)


def test_chunk_logits_become_their_gradient_and_chunks_fit_the_budget():
    """The closed form writes its gradient over the chunk's logits (no third (rows x V) block), so its
    automatic chunks are larger than the autograd path's for the same memory budget."""
    objective = build_objective(TERMS["default"], memory_budget_mb=64)
    closed = objective.chunk_size_for(49152, closed=True)
    assert closed > objective.chunk_size_for(49152)
    assert closed * 49152 * 4 * closed_form.LIVE_TENSORS <= 64 * 2**20
    hidden, weight, teacher, targets, mask = inputs(seed=3)
    logits = (hidden.detach() @ weight.detach().T).reshape(-1, 29)
    loss, grad = closed_form.chunk_loss_and_grad(objective.terms, True, logits, DenseSignal(
        logits=teacher.reshape(-1, 29)), targets.reshape(-1), 21, 0.0,
        {t.name: torch.zeros((), dtype=torch.float64) for t in objective.terms})
    assert grad.data_ptr() == logits.data_ptr() and torch.isfinite(loss)


@pytest.mark.parametrize("terms", [[{"kind": "reverse_kl"}], [{"kind": "jsd"}],
                                   [{"kind": "forward_kl", "temperature": {"schedule": "entropy",
                                                                           "confident": 2, "uncertain": 1}}]])
def test_other_objectives_are_not_eligible(terms):
    objective = build_objective(terms)
    assert not closed_form.eligible(objective.terms, DenseSignal(logits=torch.zeros(1, 1, 3)), {})


def test_sparse_teacher_and_token_weights_are_not_eligible():
    objective = build_objective(TERMS["default"])
    sparse = SparseSignal(ids=torch.zeros(1, 1, 2, dtype=torch.long), logprobs=torch.zeros(1, 1, 2))
    assert not closed_form.eligible(objective.terms, sparse, {})
    assert not closed_form.eligible(objective.terms, DenseSignal(logits=torch.zeros(1, 1, 3)),
                                    {"token_weight": torch.ones(1)})
