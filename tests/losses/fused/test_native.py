"""The compiled closed-form kernel (native.py) equals the fp64 autograd path in values, logged terms and
gradients on odd shapes (vocabularies below, at and across its 512-element blocks, rows split between
threads), keeps the general path's support rule for -inf teacher ids, and is built atomically."""
import os
import shutil

import pytest
import torch

from kdistill.losses import DenseSignal, build_objective
from kdistill.losses.fused import closed_form, native

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                reason="no C compiler: the torch passes run instead (tested in test_closed_form)")

TERMS = {
    "default": [{"kind": "forward_kl", "weight": 1.0}, {"kind": "ce", "weight": 0.1}],
    "tempered+smoothing": [{"kind": "forward_kl", "weight": 0.5, "temperature": 2.0},
                           {"kind": "ce", "weight": 0.5, "label_smoothing": 0.1}],
    "two-temperatures": [{"kind": "forward_kl", "weight": 0.7, "temperature": 1.5},
                         {"kind": "ce", "weight": 0.3, "temperature": 0.8, "label_smoothing": 0.05}],
    "kl-only": [{"kind": "forward_kl", "temperature": 0.7}],
    "ce-only": [{"kind": "ce", "label_smoothing": 0.2}],
}


def inputs(seed: int, n: int, d: int, v: int, gaps: bool):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(1, n, d, generator=g, dtype=torch.float64)
    weight = torch.randn(v, d, generator=g, dtype=torch.float64)
    teacher = torch.randn(1, n, v, generator=g, dtype=torch.float64) * 3
    if gaps:  # a padded vocabulary in some rows: ids outside the teacher's support
        teacher[0, ::2, v // 3::5] = float("-inf")
    targets = torch.randint(0, v, (1, n), generator=g)
    mask = torch.rand(1, n, generator=g) > 0.2
    return hidden, weight, teacher, targets, mask


def run(terms, dtype, closed, use_native, hidden, weight, teacher, targets, mask, chunk, monkeypatch):
    monkeypatch.setenv("KDISTILL_NATIVE", "1" if use_native else "0")
    objective = build_objective(terms, t2_scale=True, chunk_size=chunk)
    objective.use_closed_form = closed
    h = hidden.to(dtype).requires_grad_()
    w = weight.to(dtype).requires_grad_()
    out = objective(h, w, DenseSignal(logits=teacher.to(dtype)), targets, mask, int(mask.sum()) + 2, 0.3)
    out.loss.backward()
    return out.loss.item(), {k: float(v) for k, v in out.terms.items()}, h.grad.double(), w.grad.double()


def close(a, b, rtol):
    return float((a - b).abs().max()) <= rtol * float(b.abs().max())


@pytest.mark.parametrize("name", sorted(TERMS))
@pytest.mark.parametrize("v", [7, 512, 1031])
@pytest.mark.parametrize("gaps", [False, True])
def test_equals_fp64_autograd_path(name, v, gaps, monkeypatch):
    assert native.load() is not None, "a C compiler is on PATH, so the kernel must build"
    hidden, weight, teacher, targets, mask = inputs(v + len(name), n=13, d=9, v=v, gaps=gaps)
    args = (hidden, weight, teacher, targets, mask, 5, monkeypatch)
    fast = run(TERMS[name], torch.float32, True, True, *args)
    torch_passes = run(TERMS[name], torch.float32, True, False, *args)
    exact = run(TERMS[name], torch.float64, False, False, *args)
    assert fast[0] == pytest.approx(exact[0], rel=2e-6)
    assert fast[1] == pytest.approx(exact[1], rel=2e-6)
    assert close(fast[2], exact[2], 1e-5) and close(fast[3], exact[3], 1e-5)
    # and it is the kernel that ran: the torch passes round differently
    assert fast[2].ne(torch_passes[2]).any()


def test_rows_split_between_threads_give_the_same_bits(monkeypatch):
    kernel = native.load()
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(11, 777, generator=g), torch.randn(11, 777, generator=g) * 2
    y = torch.randint(0, 777, (11,), generator=g)
    results = []
    for threads in (1, 3, 16):
        monkeypatch.setattr(torch, "get_num_threads", lambda n=threads: n)
        grad = s.clone()
        kl, ce = native.chunk(kernel, grad, t, y, 0.5, 1.0, 0.3, 0.1, 0.05)
        results.append((grad, kl, ce))
    for grad, kl, ce in results[1:]:
        assert torch.equal(grad, results[0][0]) and torch.equal(kl, results[0][1]) and torch.equal(ce, results[0][2])


def test_gradient_rows_sum_to_zero_and_match_the_softmax_formula():
    """d KL / ds = c (q - p) row by row, computed here with torch's own softmax."""
    kernel = native.load()
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 600, generator=g) * 4, torch.randn(4, 600, generator=g) * 4
    grad = s.clone()
    kl, ce = native.chunk(kernel, grad, t, None, 0.5, 1.0, 2.0, 0.0, 0.0)
    q, p = torch.softmax(s.double() * 0.5, -1), torch.softmax(t.double() * 0.5, -1)
    assert ce is None and torch.allclose(grad.double(), 2.0 * (q - p), atol=1e-8, rtol=1e-4)
    expected = (p * (p.log() - q.log())).sum(-1)
    assert torch.allclose(kl, expected, rtol=1e-5)
    assert float(grad.sum(-1).abs().max()) < 1e-6


def test_not_taken_where_it_does_not_apply(monkeypatch):
    plan = [(type("Term", (), {"kind": "forward_kl"})(), 1.0, 1.0)]
    s = torch.zeros(4, 10)
    assert closed_form.native_kernel(plan, s) is not None
    assert closed_form.native_kernel(plan, s.double()) is None  # fp64: the torch passes
    assert closed_form.native_kernel(plan, s.T) is None  # no unit stride in V
    assert closed_form.native_kernel(plan * 2, s) is None  # two KL terms
    monkeypatch.setenv("KDISTILL_NATIVE", "0")
    assert closed_form.native_kernel(plan, s) is None


def test_build_is_cached_and_atomic(tmp_path, monkeypatch):
    first = native.build(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert native.build(tmp_path) == first and first.stat().st_mtime_ns == stamp  # not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary left behind
    monkeypatch.setattr(native, "FLAGS", [*native.FLAGS, "-DKD_BREAK", "-include", "/nonexistent/header.h"])
    with pytest.raises(RuntimeError, match="failed on native_kernel.c"):
        native.build(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # the failed build left nothing


def test_without_a_compiler_the_torch_passes_run(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "_state", {})
    assert native.load() is None
    hidden, weight, teacher, targets, mask = inputs(3, n=6, d=5, v=40, gaps=False)
    fast = run(TERMS["default"], torch.float32, True, True, hidden, weight, teacher, targets, mask, 4, monkeypatch)
    exact = run(TERMS["default"], torch.float64, False, False, hidden, weight, teacher, targets, mask, 4, monkeypatch)
    assert fast[0] == pytest.approx(exact[0], rel=1e-5)
    assert not os.listdir(tmp_path / "cache" / "native") if (tmp_path / "cache" / "native").exists() else True


def test_a_target_outside_the_vocabulary_is_refused_before_the_kernel_runs():
    s = torch.zeros(3, 10)
    with pytest.raises(IndexError, match=r"outside the vocabulary \[0, 10\)"):
        native.chunk(native.load(), s, None, torch.tensor([0, 10, 2]), 1.0, 1.0, 0.0, 1.0, 0.0)
    assert torch.equal(s, torch.zeros(3, 10))  # untouched
