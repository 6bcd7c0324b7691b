"""train.precision=fp16 on CPU (torch's CPU autocast takes float16): the loss scaler's gradients are
unscaled before their norm, an overflow skips the step without touching the weights and halves the scale,
MAX_SKIPPED skips in a row stop with NonFiniteLoss, and the scaler's state is checkpointed and resumed."""
import json
import logging
from types import SimpleNamespace

import pytest
import torch
from helpers import tiny_llama, tiny_tokenizer

from kdistill.config.schema import load_config
from kdistill.losses import build_objective
from kdistill.sources.model import ModelSource
from kdistill.train import loop
from kdistill.train.precision import MAX_SKIPPED, Precision, make_precision
from kdistill.train.step import NonFiniteLoss, StudentLoss, train_step

VOCAB = 300
CPU = torch.device("cpu")


def _batch(seed=0, b=4, t=9) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (b, t), generator=g)
    ones = torch.ones(b, t, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": ones, "targets": torch.roll(ids, -1, 1), "mask": ones.bool()}


class Run:
    """A tiny student, its teacher and AdamW under one Precision; `step()` is one train_step."""

    def __init__(self, precision: Precision):
        self.student, teacher = tiny_llama(VOCAB, seed=1).train(), tiny_llama(VOCAB, seed=0)
        self.optimizer = torch.optim.AdamW(self.student.parameters(), lr=1e-3)
        self.model = StudentLoss(self.student, build_objective([{"kind": "forward_kl"}]), precision=precision)
        self.source, self.precision, self.n = ModelSource(teacher, tiny_tokenizer(), ""), precision, 0

    def step(self) -> dict:
        self.n += 1
        return train_step(self.model, self.source, self.optimizer, [_batch(2 * self.n), _batch(2 * self.n + 1)],
                          CPU, 0.0, 1.0)

    def weights(self) -> dict:
        return {k: v.clone() for k, v in self.student.state_dict().items()}


def _fp16(init_scale=2.0**16, **kw) -> Precision:
    return Precision("fp16", CPU, torch.amp.GradScaler("cpu", init_scale=init_scale, **kw))


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(v, b[k]) for k, v in a.items())


def test_fp16_trains_on_cpu_and_its_gradient_norm_is_the_unscaled_one():
    fp32, fp16 = Run(make_precision("fp32", CPU)), Run(_fp16())
    before = fp16.weights()
    a, b = fp32.step(), fp16.step()
    assert "loss_scale" not in a and "skipped_step" not in a  # no scaler, no scaler columns
    assert b["skipped_step"] == 0 and b["loss_scale"] == 2.0**16
    assert torch.isfinite(torch.tensor(b["loss"])) and not _same(fp16.weights(), before)
    assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-2)  # not 65536 times it: unscaled first
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-2)


def test_an_overflow_skips_the_step_keeps_the_weights_and_halves_the_scale():
    run = Run(_fp16(init_scale=2.0**100))  # the scaled gradients overflow float16 in the backward
    weights, moments = run.weights(), dict(run.optimizer.state)
    row = run.step()
    assert row["skipped_step"] == 1 and row["loss_scale"] == 2.0**100
    assert not torch.isfinite(torch.tensor(row["grad_norm"])) and torch.isfinite(torch.tensor(row["loss"]))
    assert _same(run.weights(), weights) and dict(run.optimizer.state) == moments  # AdamW never stepped
    assert run.precision.scaler.get_scale() == 2.0**99 and run.precision.skipped_in_row == 1
    assert all(p.grad is None for p in run.student.parameters())


def test_a_good_step_after_a_skipped_one_resets_the_count():
    run = Run(_fp16(init_scale=2.0**100))
    run.step()
    run.precision.scaler.update(2.0**10)  # a scale that fits: the next step is taken
    assert run.step()["skipped_step"] == 0 and run.precision.skipped_in_row == 0


def test_max_skipped_steps_in_a_row_stop_with_non_finite_loss():
    run = Run(_fp16(init_scale=2.0**120))  # still overflowing after MAX_SKIPPED halvings
    weights = run.weights()
    rows = [run.step() for _ in range(MAX_SKIPPED - 1)]
    assert [r["skipped_step"] for r in rows] == [1] * (MAX_SKIPPED - 1)
    with pytest.raises(NonFiniteLoss) as e:
        run.step()
    message = str(e.value)
    assert message.startswith(f"{MAX_SKIPPED} steps in a row had a gradient that is not finite")
    assert "train.precision=fp16" in message and "train.precision=bf16" in message and "fp32" in message
    assert f"{2.0 ** (120 - MAX_SKIPPED + 1):g}" in message
    assert _same(run.weights(), weights)


def test_a_loss_that_overflows_float16_is_still_an_error_that_names_fp16():
    """A forward that overflows float16 is no gradient overflow: no scale helps, so no skipped step."""
    run = Run(_fp16())
    with torch.no_grad():
        run.student.model.layers[0].mlp.down_proj.weight.mul_(1e6)  # fine in fp32, past 65504 in fp16
    weights = run.weights()
    with pytest.raises(NonFiniteLoss) as e:
        run.step()
    assert "train.precision=fp16: the student's activations may have overflowed float16" in str(e.value)
    assert _same(run.weights(), weights) and run.precision.skipped_in_row == 0


def test_bf16_on_cpu_warns_that_it_is_slow_and_still_trains(caplog):
    with caplog.at_level(logging.WARNING, logger="kdistill"):
        run = Run(make_precision("bf16", CPU))
    assert "train.precision=bf16 on CPU" in caplog.text and "slower than fp32" in caplog.text
    assert run.precision.scaler is None
    row = run.step()
    assert torch.isfinite(torch.tensor(row["loss"])) and "loss_scale" not in row


def test_a_student_loss_built_without_a_precision_takes_auto_on_its_device():
    run = Run(None)
    run.step()
    assert run.model.precision.name == "fp32" and run.model.precision.scaler is None


class Stream:
    """Batches by number, its position checkpointed."""

    def __init__(self):
        self.i = 0

    def next(self) -> dict:
        self.i += 1
        return _batch(100 + self.i)

    def state(self) -> dict:
        return {"i": self.i}

    def load_state(self, state: dict) -> None:
        self.i = state["i"]


def _train(tmp_path, steps: int, resume_from=None) -> list[dict]:
    tc = load_config(None, [f"train.max_steps={steps}", "train.checkpoint_every=1", "train.eval_every=100",
                            "train.batch_size=4", "train.precision=fp16", "train.warmup_steps=0"]).train
    parts = loop.Parts(tiny_llama(VOCAB, seed=1), ModelSource(tiny_llama(VOCAB, seed=0), tiny_tokenizer(), ""),
                       build_objective([{"kind": "forward_kl"}]), Stream(), lambda step, student: {}, CPU)
    run = SimpleNamespace(path=tmp_path, resume_from=resume_from, on_checkpoint=None)
    return loop.run_training(tc, parts, run).history


def test_the_scalers_state_is_checkpointed_and_resumed(tmp_path, monkeypatch):
    """The scale doubles after every good step (growth_interval=1); a resumed run goes on from the saved
    scale and growth settings, not from a fresh scaler's 65536."""
    real = loop.make_precision
    monkeypatch.setattr(loop, "make_precision",
                        lambda *a: Precision("fp16", CPU, torch.amp.GradScaler("cpu", init_scale=1024.0,
                                                                               growth_interval=1)))
    rows = _train(tmp_path, 2)
    assert [r["loss_scale"] for r in rows] == [1024.0, 2048.0] and [r["skipped_step"] for r in rows] == [0, 0]
    folder = tmp_path / "checkpoints" / "step-000002"
    saved = json.loads((folder / "trainer_state.json").read_text())["grad_scaler"]
    assert saved["scaler"]["scale"] == 4096.0 and saved["scaler"]["growth_interval"] == 1
    assert saved["skipped_in_row"] == 0
    monkeypatch.setattr(loop, "make_precision", real)  # a fresh scaler would start at 65536
    rows = _train(tmp_path, 3, resume_from=folder)
    assert [(r["step"], r["loss_scale"]) for r in rows] == [(3, 4096.0)]


def test_without_fp16_no_scaler_state_is_checkpointed(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "make_precision", lambda *a: make_precision("fp32", CPU))
    _train(tmp_path, 1)
    state = json.loads((tmp_path / "checkpoints" / "step-000001" / "trainer_state.json").read_text())
    assert "grad_scaler" not in state
