"""One optimizer step: a NaN or an infinity in the teacher's signal, in the loss, or in the weights the
update leaves is each stopped with its own error and fix, and only the update touches the weights."""
import pytest
import torch
from helpers import tiny_llama, tiny_tokenizer

from kdistill.losses import build_objective
from kdistill.sources.model import ModelSource
from kdistill.train import debug
from kdistill.train.step import (
    NonFiniteLoss,
    NonFiniteTeacher,
    NonFiniteUpdate,
    StudentLoss,
    train_step,
)

VOCAB = 300


def _batch(b=4, t=9, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (b, t), generator=g)
    ones = torch.ones(b, t, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": ones, "targets": torch.roll(ids, -1, 1), "mask": ones.bool()}


def _step(student, teacher, lr=1e-3, micro=2):
    """One train_step of `student` against `teacher` (forward KL, AdamW at `lr`, `micro` micro-batches)."""
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr)
    model = StudentLoss(student, build_objective([{"kind": "forward_kl"}]))
    source = ModelSource(teacher, tiny_tokenizer(), "")
    return train_step(model, source, optimizer, [_batch(seed=i) for i in range(micro)], torch.device("cpu"), 0.0, 1.0)


def _models():
    return tiny_llama(VOCAB, seed=1).train(), tiny_llama(VOCAB, seed=0)


def _copy(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model, before: dict) -> bool:
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_finite_step_trains():
    student, teacher = _models()
    before = _copy(student)
    row = _step(student, teacher)
    assert torch.isfinite(torch.tensor(row["loss"])) and not _same(student, before)


def test_a_teacher_whose_weights_hold_nan_is_blamed_not_the_learning_rate():
    student, teacher = _models()
    with torch.no_grad():
        teacher.model.layers[0].mlp.up_proj.weight[3, 5] = float("nan")
    before = _copy(student)
    with pytest.raises(NonFiniteTeacher) as e:
        _step(student, teacher)
    message = str(e.value)
    assert "teacher's signal is not finite" in message and "NaN" in message
    assert "teacher.model" in message and "will not help" in message and "Lower train.lr" not in message
    assert _same(student, before)  # the optimizer never stepped


def test_minus_inf_teacher_logits_are_not_a_fault():
    """-inf is an id outside the teacher's support (a padded vocabulary); only NaN and +inf are broken."""
    from kdistill.losses.signals import DenseSignal

    logits = torch.zeros(2, 3, 5)
    logits[..., -1] = float("-inf")
    assert debug.non_finite_teacher(DenseSignal(logits=logits)) is None
    logits[0, 1, 2] = float("inf")
    assert "DenseSignal.logits (0 NaN and 1 +inf of 30 values)" == debug.non_finite_teacher(DenseSignal(logits=logits))


def test_a_loss_that_overflows_with_a_finite_teacher_says_lower_the_lr():
    student, teacher = _models()
    with torch.no_grad():
        student.model.norm.weight.fill_(3e38)  # finite weights whose logits overflow
    before = _copy(student)
    with pytest.raises(NonFiniteLoss, match=r"the loss became nan: the teacher's signal and the student's weights "
                                            r"are finite, so the student's logits overflowed.*Lower train.lr"):
        _step(student, teacher)
    assert _same(student, before)


def test_a_student_whose_weights_hold_nan_names_the_weight():
    student, teacher = _models()
    with torch.no_grad():
        student.model.layers[1].self_attn.q_proj.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteLoss, match=r"student's weights are not finite \(first in "
                                            r"model.layers.1.self_attn.q_proj.weight\)"):
        _step(student, teacher)


def test_an_update_that_leaves_non_finite_weights_is_told_apart():
    """lr=inf: the loss and the gradients are finite, the weights after the step are not."""
    student, teacher = _models()
    with pytest.raises(NonFiniteUpdate) as e:
        _step(student, teacher, lr=float("inf"))
    message = str(e.value)
    assert "update made the weights non-finite (first in model." in message
    assert "learning rate of this step was inf" in message and "Lower train.lr" in message
    assert "teacher" not in message
