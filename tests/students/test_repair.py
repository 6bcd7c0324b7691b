"""Residual-stream repair: the fitted student is closer to its teacher on rows it never saw, the fit is
folded into a plain LLaMA exactly, and the chunked KL equals the plain one (values and gradients)."""
import pytest
import torch

from kdistill.students.init import TeacherTargets
from kdistill.students.repair import _kl, repair_scales, repairable, teacher_targets
from tests.students.copies import VOCAB, heldout_kl, rows, teacher_and_copy


def test_repaired_student_starts_closer_on_heldout_rows():
    teacher, student = teacher_and_copy()
    calib, held = rows(0), rows(1)
    plain = heldout_kl(student, teacher, held)
    report = repair_scales(student, calib, teacher_targets(teacher, calib, student.lm_head.weight), steps=30)
    assert report["calibration_kl_after"] < report["calibration_kl_before"]
    assert heldout_kl(student, teacher, held) < 0.9 * plain
    assert type(student).__name__ == "LlamaForCausalLM" and repairable(student)


def test_fit_is_folded_into_the_weights_exactly():
    teacher, student = teacher_and_copy()
    calib = rows(2)
    report = repair_scales(student, calib, teacher_targets(teacher, calib, student.lm_head.weight), steps=10)
    assert heldout_kl(student, teacher, calib) == pytest.approx(report["calibration_kl_after"], abs=2e-4)
    assert all(p.requires_grad for p in student.parameters())  # training later sees every weight as before


def test_no_steps_changes_nothing():
    teacher, student = teacher_and_copy()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    calib = rows(3)
    repair_scales(student, calib, teacher_targets(teacher, calib, student.lm_head.weight), steps=0)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


@pytest.mark.parametrize("n", [1, 37, 300])
def test_chunked_kl_equals_plain_kl_values_and_gradients(n):
    g = torch.Generator().manual_seed(n)
    weight = torch.randn(VOCAB + 3, 16, generator=g, dtype=torch.float64)
    lp = torch.randn(n, VOCAB + 3, generator=g, dtype=torch.float64).log_softmax(-1)
    hidden = torch.randn(n, 16, generator=g, dtype=torch.float64, requires_grad=True)
    fast = _kl(TeacherTargets(lp, weight), hidden)
    (grad_fast,) = torch.autograd.grad(fast, hidden)
    plain = (lp.exp() * (lp - (hidden @ weight.T).log_softmax(-1))).sum(-1).mean()
    (grad_plain,) = torch.autograd.grad(plain, hidden)
    assert fast.item() == pytest.approx(plain.item(), rel=1e-10, abs=1e-12)
    assert torch.allclose(grad_fast, grad_plain, rtol=1e-9, atol=1e-12)


def test_passes_of_fewer_rows_fit_the_same_scales():
    """A step over rows run a few at a time (odd split, a row of ragged length) is the one-pass step."""
    teacher, one = teacher_and_copy()
    _, split = teacher_and_copy()
    calib = rows(4, b=7)
    calib["mask"][3, :20] = False  # a row with few counted positions: pass weights are by positions
    targets = teacher_targets(teacher, calib, one.lm_head.weight)
    a = repair_scales(one, calib, targets, steps=6)
    b = repair_scales(split, calib, teacher_targets(teacher, calib, split.lm_head.weight), steps=6, rows_per_pass=3)
    assert b["calibration_kl_after"] == pytest.approx(a["calibration_kl_after"], rel=1e-5)
    assert b["mlp_scales"] == pytest.approx(a["mlp_scales"], rel=1e-4)
    for (name, p), q in zip(one.state_dict().items(), split.state_dict().values()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=name)
