"""train.time_budget: the step count fills what is left after the timed steps (the cosine sized to it, a
cap respected), steps that turn slower lower it and steps that turn faster raise it so the run still ends
near its deadline, a resumed run keeps the count its budget gave it, the span fit and the repair stop at their share, and `kdistill
distill` with a budget trains, says the count and describes it."""
import json
import time
from types import SimpleNamespace

import pytest
import torch
from helpers import tiny_llama, tiny_tokenizer

from kdistill.base.errors import ConfigError
from kdistill.config.schema import TrainConfig, load_config
from kdistill.losses import build_objective
from kdistill.run.plan import describe
from kdistill.sources.model import ModelSource
from kdistill.students.repair import repair_scales, teacher_targets
from kdistill.students.span_fit import fit_spans
from kdistill.train import budget as B
from kdistill.train import checkpoint
from kdistill.train.loop import Parts, run_training
from kdistill.train.schedule import lr_factor
from tests.students.copies import rows as copy_rows
from tests.students.copies import teacher_and_copy

VOCAB = 300


class Clock:
    """The budget's clock (`time.time` and `time.perf_counter` in kdistill/train/budget.py), moved only by the
    stream's draws: a step takes exactly its delay whatever else the machine runs, so the counts are exact."""

    def __init__(self):
        self.now = 1000.0

    def time(self) -> float:
        return self.now

    perf_counter = time

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(B, "time", fake)
    return fake


class Slow:
    """The loop's stream: one fixed batch, each draw taking `delays[i]` seconds (the last one repeats) of the
    budget's clock (a real sleep without one)."""

    def __init__(self, delays: list[float], clock=time):
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, VOCAB, (2, 8), generator=g)
        self.batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "targets": torch.roll(ids, -1, 1),
                      "mask": torch.ones_like(ids, dtype=torch.bool)}
        self.delays, self.i, self.clock = delays, 0, clock

    def next(self) -> dict:
        self.clock.sleep(self.delays[min(self.i, len(self.delays) - 1)])
        self.i += 1
        return self.batch

    def state(self) -> dict:
        return {"i": self.i}

    def load_state(self, state: dict) -> None:
        self.i = state["i"]


def train(path, delays, budget, resume_from=None, eval_s=0.0, clock=time, **keys):
    path.mkdir(exist_ok=True)
    tc = TrainConfig(**{"lr": 1e-3, "warmup_steps": 0, "checkpoint_every": 5, "eval_every": 1000,
                        "max_steps": None, "keep_checkpoints": 100, **keys})
    parts = Parts(tiny_llama(VOCAB, seed=1).train(), ModelSource(tiny_llama(VOCAB, seed=0), tiny_tokenizer(), ""),
                  build_objective([{"kind": "forward_kl"}]), Slow(delays, clock), lambda step, model: {},
                  torch.device("cpu"), budget=budget, eval_s=eval_s)
    return run_training(tc, parts, SimpleNamespace(path=path, resume_from=resume_from, on_checkpoint=None))


def test_plan_steps_fills_what_is_left_with_evaluations_counted_and_respects_the_cap(monkeypatch):
    budget = B.Budget(1.0, start=1000.0)  # deadline 1060
    monkeypatch.setattr(B.time, "time", lambda: 1020.0)  # 40 s left
    assert budget.left() == 40.0
    assert budget.plan_steps(3, 2.0, 0.0, 0, None) == 3 + 20
    assert budget.plan_steps(3, 2.0, 10.0, 5, None) == 3 + 10  # an evaluation of 10 s every 5 steps: 4 s a step
    assert budget.plan_steps(3, 2.0, 0.0, 0, 12) == 12
    monkeypatch.setattr(B.time, "time", lambda: 1100.0)  # spent: nothing more
    assert budget.plan_steps(3, 2.0, 0.0, 0, None) == 3
    assert budget.fit_limits() == {"span_fit": 0.0, "repair": 0.0}
    monkeypatch.setattr(B.time, "time", lambda: 1020.0)
    assert budget.fit_limits() == pytest.approx({"span_fit": 20.0, "repair": 4.0})  # the default shares
    assert budget.fit_limits(0.5, 0.25) == {"span_fit": 20.0, "repair": 10.0}
    assert B.Budget(None).fit_limits() is None and not B.Budget(None)


def test_a_budget_sizes_the_steps_and_the_cosine_and_the_run_ends_near_its_deadline(tmp_path, clock):
    start = clock.time()
    budget = B.Budget(1.5 / 60, start=start)  # 1.5 s from now
    state = train(tmp_path, [0.05], budget, clock=clock, min_lr_ratio=0.1)
    took = clock.time() - start
    steps = [r["step"] for r in state.history]
    assert steps == list(range(1, state.total + 1))
    assert state.total == 30  # 1.5 s at 0.05 s a step
    assert 1.5 - 0.05 <= took <= 1.5  # the deadline, within a step
    last = state.history[-1]
    assert last["lr"] == pytest.approx(1e-3 * lr_factor(state.total - 1, 0, state.total, 0.1))  # cosine on the count
    saved = checkpoint.read_state(checkpoint.list_checkpoints(tmp_path)[-1])
    assert saved["budget_steps"] == state.total and saved["step"] == state.total


def test_a_cap_ends_the_run_before_the_budget(tmp_path):
    state = train(tmp_path, [0.0], B.Budget(10.0), max_steps=4)
    assert state.total == 4 and len(state.history) == 4


def test_steps_that_turn_slower_lower_the_count(tmp_path, caplog, clock):
    start = clock.time()
    budget = B.Budget(2.0 / 60, start=start)
    with caplog.at_level("INFO", logger="kdistill"):
        state = train(tmp_path, [0.02] * 4 + [0.12], budget, clock=clock)
    took = clock.time() - start
    planned = [int(m.split(": ")[1].split(" steps")[0]) for m in caplog.messages if m.startswith("time budget")]
    assert len(planned) >= 2 and planned[0] > 40  # first sized at ~0.02 s a step
    assert state.total == planned[-1] < planned[0] and len(state.history) == state.total
    assert took <= 2.0 * B.SLACK  # inside the budget, give or take the slack a slower step may take


def test_steps_that_turn_faster_raise_the_count(tmp_path, caplog, clock):
    start = clock.time()
    budget = B.Budget(2.0 / 60, start=start)
    with caplog.at_level("INFO", logger="kdistill"):
        state = train(tmp_path, [0.12] * 6 + [0.02], budget, clock=clock)  # a teacher skipped after the first epoch
    took = clock.time() - start
    planned = [int(m.split(": ")[1].split(" steps")[0]) for m in caplog.messages if m.startswith("time budget")]
    assert len(planned) >= 2 and planned[0] < 20  # first sized at ~0.12 s a step
    assert state.total == planned[-1] > planned[0] + 5 and len(state.history) == state.total
    assert any("faster than measured" in m for m in caplog.messages)
    assert 2.0 - 0.12 < took <= 2.0 * B.SLACK  # the faster steps fill the budget to within a step, and stay inside it


def test_a_resumed_run_keeps_the_count_its_budget_gave(tmp_path, clock):
    first = train(tmp_path / "a", [0.03], B.Budget(1.0 / 60), clock=clock)
    assert first.total >= 10
    at5 = tmp_path / "a" / "checkpoints" / "step-000005"
    count = checkpoint.read_state(at5)["budget_steps"]  # the count then (steps that turned slower may lower it)
    assert count >= first.total
    resumed = train(tmp_path / "a", [0.0], B.Budget(10.0), resume_from=at5, clock=clock)  # a budget that would give far more
    assert resumed.total == count
    assert [r["step"] for r in resumed.history] == list(range(6, count + 1))


def test_the_span_fit_and_the_repair_stop_at_their_share():
    teacher, student = teacher_and_copy((0, 3))
    report = fit_spans(student, teacher, copy_rows(0, b=12), [0, 3], steps=40, rows_per_step=4, seconds=0.0)
    assert report["steps"] == 1 and report["seconds_limit"] == 0.0
    teacher, student = teacher_and_copy()
    calib = copy_rows(2)
    targets = teacher_targets(teacher, calib, student.lm_head.weight)
    report = repair_scales(student, calib, targets, steps=30, seconds=0.0)
    assert report["steps"] == 1 and report["calibration_kl_after"] <= report["calibration_kl_before"]
    full = repair_scales(*teacher_and_copy()[1:], calib, targets, steps=3)
    assert full["steps"] == 3


def test_the_config_checks_and_the_plan_say_the_budget(tmp_path):
    with pytest.raises(ConfigError, match="train.time_budget"):
        load_config(None, ["train.time_budget=0"])
    cfg = load_config(None, ["train.time_budget=8", f"output_dir={tmp_path / 'run'}"])
    assert cfg.train.max_steps is None  # the measured steps decide, not the default 150
    line = next(x for x in describe(cfg) if x.startswith("training:"))
    assert "time budget of 8 min" in line and "50%" in line and "at most" not in line
    capped = load_config(None, ["train.time_budget=8", "train.max_steps=40", f"output_dir={tmp_path / 'run'}"])
    assert "at most 40 steps" in next(x for x in describe(capped) if x.startswith("training:"))
    shared = load_config(None, ["train.time_budget=8", "student.span_fit_share=0.45", "student.repair_share=0.2",
                                f"output_dir={tmp_path / 'run'}"])
    line = next(x for x in describe(shared) if x.startswith("training:"))
    assert "span fit may take 45% and the repair 20%" in line


def test_distill_with_a_budget_trains_the_count_it_says(teacher_dir, tmp_path, caplog):
    from kdistill.run.distill import distill

    out = tmp_path / "run"
    cfg = load_config(None, [f"teacher.model={teacher_dir}", f"output_dir={out}", "train.seq_len=32",
                             "train.batch_size=4", "train.threads=1", "data.generate.num_samples=16",
                             "data.generate.max_new_tokens=24", "student.num_layers=1", "eval.max_new_tokens=4",
                             "eval.measure_speed=false", "eval.prompts=[Once]", "train.time_budget=0.4",
                             "train.eval_every=1000"])
    with caplog.at_level("INFO", logger="kdistill"):
        result = distill(cfg)
    said = [m for m in caplog.messages if m.startswith("time budget")]
    count = int(said[-1].split(": ")[1].split(" steps")[0])
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == count >= B.TIMED_STEPS
    assert "heldout" in result and "training" in result["phases"]
    assert f"training: {count} steps" in (out / "student" / "README.md").read_text()
