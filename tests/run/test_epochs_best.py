"""train.epochs and train.keep_best through `distill`: the steps are counted from the training examples and
drive the schedule, evaluations and checkpoints; max_steps, when also set, wins (as in HF Trainer) and
the plan says so; the run's student is checkpoints/best; the step-0 held-out row reaches TensorBoard."""
import importlib.util
import json
import math

import pytest
import torch
import yaml
from safetensors.torch import load_file

from kdistill.base.errors import ConfigError
from kdistill.config.schema import load_config
from kdistill.run import plan
from kdistill.run.distill import distill
from kdistill.train import checkpoint

FAST = ["train.seq_len=32", "train.batch_size=4", "train.threads=1", "data.generate.num_samples=16",
        "data.generate.max_new_tokens=24", "student.num_layers=1", "eval.max_new_tokens=2",
        "eval.measure_speed=false", "eval.prompts=[Once]", "student.repair_steps=0", "student.span_fit_steps=0"]
EPOCHS = ["train.epochs=2", "train.eval_every=2", "train.checkpoint_every=3", "train.warmup_steps=2",
          "train.keep_best=true"]


def test_epochs_leave_max_steps_empty_and_max_steps_set_too_wins():
    assert load_config(None, []).train.max_steps == 150  # neither set: the default
    by_epochs = load_config(None, ["train.epochs=3"]).train
    assert by_epochs.max_steps is None and by_epochs.epochs == 3
    assert plan.training_steps(by_epochs, 100) == math.ceil(3 * 100 / 8)  # batch_size 8, grad_accum 1
    accumulated = load_config(None, ["train.epochs=3", "train.batch_size=4", "train.grad_accum=3"]).train
    assert plan.training_steps(accumulated, 100) == 25  # ceil(300 / 12)
    both = load_config(None, ["train.epochs=3", "train.max_steps=20"]).train
    assert plan.training_steps(both, 100) == 20
    assert plan.steps_note(both).startswith("train.max_steps=20 overrides train.epochs=3 (as max_steps overrides "
                                            "num_train_epochs in HF Trainer)")
    assert plan.steps_note(by_epochs) is None
    with pytest.raises(ConfigError, match=r"train.epochs=0 \(command line\) must be at least 1"):
        load_config(None, ["train.epochs=0"])


def test_the_dry_run_says_how_epochs_count_the_steps(teacher_dir, tmp_path):
    common = [f"teacher.model={teacher_dir}", f"output_dir={tmp_path / 'run'}", *FAST]
    lines = plan.describe(load_config(None, [*common, "train.epochs=2", "train.keep_best=true"]))
    training = next(x for x in lines if x.startswith("training:"))
    assert training.startswith("training: 2 epochs = ceil(2 x N / 4) steps for the N training examples")
    assert "the student is the checkpoint of the lowest held-out KL (train.keep_best)" in training
    lines = plan.describe(load_config(None, [*common, "train.epochs=2", "train.max_steps=3"]))
    assert "3 steps x 4 sequences x 32 tokens = 384 tokens (train.max_steps=3 overrides train.epochs=2" in \
        next(x for x in lines if x.startswith("training:"))


@pytest.fixture(scope="module")
def epochs_run(teacher_dir, tmp_path_factory):
    """One run of 2 epochs with keep_best and TensorBoard: (output folder, metrics rows, eval.json, log text)."""
    out = tmp_path_factory.mktemp("epochs") / "run"
    tracker = ["train.tracker=[jsonl, tensorboard]"] if importlib.util.find_spec("tensorboard") else []
    distill(load_config(None, [f"teacher.model={teacher_dir}", f"output_dir={out}", *FAST, *EPOCHS, *tracker]))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return out, rows, json.loads((out / "eval.json").read_text()), (out / "kdistill.log").read_text()


def test_epochs_count_the_steps_that_the_schedule_evaluations_and_checkpoints_follow(epochs_run):
    out, rows, result, log = epochs_run
    n = result["data_sizes"]["train_examples"]
    steps = math.ceil(2 * n / 4)
    assert f"train.epochs=2: {steps} steps = ceil(2 x {n} training examples / 4 a step)" in log
    assert [r["step"] for r in rows] == list(range(steps + 1))
    assert [r["step"] for r in rows if "eval_kl" in r] == [0, *sorted(set(range(2, steps + 1, 2)) | {steps})]
    written = sorted(set(range(3, steps + 1, 3)) | {steps})  # every 3 steps and the counted last one; 2 kept
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best", *(f"step-{s:06d}" for s in written[-2:])]
    lr = load_config(out / "config.yaml").train.lr
    for r in rows[1:]:  # the cosine runs to the counted last step
        i = r["step"] - 1
        factor = (i + 1) / 2 if i < 2 else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (i - 2) / (steps - 2)))
        assert r["lr"] == pytest.approx(lr * factor, rel=1e-9)
    saved = yaml.safe_load((out / "config.yaml").read_text())["train"]
    assert saved["max_steps"] is None and saved["epochs"] == 2  # a resume counts again, on the same data
    assert f"{steps} steps" in (out / "student" / "README.md").read_text()


def test_keep_best_makes_the_best_checkpoint_the_student(epochs_run):
    out, rows, _, log = epochs_run
    best = checkpoint.read_state(out / "checkpoints" / "best")
    held = {r["step"]: r["eval_kl"] for r in rows if "eval_kl" in r and r["step"] > 0}
    assert best["best"] == {"step": min(held, key=held.get), "key": "eval_kl", "value": min(held.values())}
    assert best["step"] == best["best"]["step"]
    assert f"train.keep_best: the student is checkpoints/best, step {best['step']} (eval_kl" in log
    student = load_file(str(out / "student" / "model.safetensors"))
    kept = load_file(str(out / "checkpoints" / "best" / "model.safetensors"))
    assert kept.keys() <= student.keys() and all(torch.equal(student[k], v) for k, v in kept.items())


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_the_step_0_evaluation_reaches_tensorboard(epochs_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, rows, _, _ = epochs_run
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    held = {e.step: e.value for e in events.Scalars("eval_kl")}
    assert rows[0]["step"] == 0 and held[0] == pytest.approx(rows[0]["eval_kl"])
    assert set(held) == {r["step"] for r in rows if "eval_kl" in r}


def test_keep_best_with_epochs_refuses_evaluations_only_at_the_last_step(teacher_dir, tmp_path):
    """The count is known once the data is read; the error names the keys before any training."""
    cfg = load_config(None, [f"teacher.model={teacher_dir}", f"output_dir={tmp_path / 'run'}", *FAST,
                             "train.epochs=1", "train.keep_best=true", "train.eval_every=100"])
    with pytest.raises(ConfigError, match=r"train.keep_best=true .* train.eval_every=100 and the \d+ steps of "
                                          r"train.epochs=1 "):
        distill(cfg)
    assert not list((tmp_path / "run").glob("checkpoints/*"))
