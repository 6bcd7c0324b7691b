"""run_training itself, on a tiny student built in code: gradient accumulation gives the weights of one
batch of the same rows, clipping inside the loop matches a hand-written clip-then-AdamW reference, the
logged lr of every step is the warm-up/cosine formula of train/schedule.py; train.keep_best writes the
lowest held-out KL to checkpoints/best (kept by the rotation, its trainer_state naming the step and the
metric), returns its weights and keeps the best so far across a resume; and a fresh run's step-0 row
reaches the trackers as well as metrics.jsonl."""
import json
import logging
import math
from types import SimpleNamespace

import pytest
import torch
from helpers import tiny_llama, tiny_tokenizer
from safetensors.torch import load_file

from kdistill.base.errors import ConfigError
from kdistill.config.schema import TrainConfig, load_config
from kdistill.losses import build_objective
from kdistill.sources.model import ModelSource
from kdistill.train import checkpoint, loop
from kdistill.train.loop import Parts, run_training
from kdistill.train.step import StudentLoss

VOCAB = 300


def rows(n: int, seed: int, length: int = 12) -> dict:
    """`n` rows of random ids, every token counted (no padding, so any split of them is the same rows)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "targets": torch.roll(ids, -1, 1),
            "mask": torch.ones_like(ids, dtype=torch.bool)}


def part(batch: dict, lo: int, hi: int) -> dict:
    return {k: v[lo:hi] for k, v in batch.items()}


class Batches:
    """The stream the loop reads: these batches, in order."""

    def __init__(self, batches: list[dict]):
        self.batches, self.i = batches, 0

    def next(self) -> dict:
        self.i += 1
        return self.batches[(self.i - 1) % len(self.batches)]

    def state(self) -> dict:
        return {"i": self.i}

    def load_state(self, state: dict) -> None:
        self.i = state["i"]


def train(tmp_path, batches: list[dict], evaluate=None, resume_from=None, start_row=None, **keys):
    """run_training of a tiny student (seed 1) against a tiny teacher (seed 0), train section `keys`;
    returns its RunState."""
    tmp_path.mkdir(exist_ok=True)
    tc = TrainConfig(**{"lr": 1e-3, "warmup_steps": 0, "checkpoint_every": 1000, "eval_every": 1000, **keys})
    student = tiny_llama(VOCAB, seed=1).train()
    source = ModelSource(tiny_llama(VOCAB, seed=0), tiny_tokenizer(), "")
    parts = Parts(student, source, build_objective([{"kind": "forward_kl"}]), Batches(batches),
                  evaluate or (lambda step, model: {}), torch.device("cpu"), start_row=start_row)
    return run_training(tc, parts, SimpleNamespace(path=tmp_path, resume_from=resume_from, on_checkpoint=None))


def weights(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def largest_difference(a: dict, b: dict) -> float:
    return max((a[n] - b[n]).abs().max().item() for n in a)


def test_gradient_accumulation_gives_the_weights_of_one_batch_of_the_same_rows(tmp_path):
    steps = [rows(4, seed=10), rows(4, seed=11), rows(4, seed=12)]
    whole = train(tmp_path / "whole", steps, max_steps=3, batch_size=4, grad_accum=1)
    split = [part(b, lo, lo + 2) for b in steps for lo in (0, 2)]  # each step: rows 0-1, then rows 2-3
    accumulated = train(tmp_path / "accum", split, max_steps=3, batch_size=2, grad_accum=2)
    a, b = weights(whole.student), weights(accumulated.student)
    assert largest_difference(a, weights(tiny_llama(VOCAB, seed=1))) > 1e-3  # trained: Adam moves each weight ~lr
    assert largest_difference(a, b) < 2e-6
    for x, y in zip(whole.history, accumulated.history):
        assert y["tokens"] == x["tokens"] == 4 * 12
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)  # every micro-batch divided by the step's tokens
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-4)


def reference(batches: list[dict], clip: float, lr: float, max_steps: int) -> tuple[dict, list[float]]:
    """The same steps by hand: loss, backward, gradients scaled by clip / (norm + 1e-6) when above the clip,
    torch's unfused AdamW (betas 0.9, 0.95, weight decay 0.01) at the cosine schedule's lr (no warm-up)."""
    student = tiny_llama(VOCAB, seed=1).train()
    source = ModelSource(tiny_llama(VOCAB, seed=0), tiny_tokenizer(), "")
    model = StudentLoss(student, build_objective([{"kind": "forward_kl"}]))
    params = list(student.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.95), foreach=False)
    norms = []
    for i, batch in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / max_steps)))
        loss, _ = model(batch, source.signal(batch, VOCAB), int(batch["mask"].sum()), i / max_steps)
        loss.backward()
        norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params if p.grad is not None)).item()
        norms.append(norm)
        for p in params:
            if p.grad is not None:
                p.grad.mul_(min(1.0, clip / (norm + 1e-6)))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return weights(student), norms


def test_the_loop_clips_each_step_as_a_hand_written_reference_does(tmp_path):
    batches = [rows(4, seed=20 + i) for i in range(4)]
    free = train(tmp_path / "free", batches, max_steps=4, grad_clip=None)
    norms = [r["grad_norm"] for r in free.history]
    clip = min(norms) / 1e4  # below every norm, so far that each clipped gradient is near Adam's eps
    clipped = train(tmp_path / "clipped", batches, max_steps=4, grad_clip=clip)
    expected, manual_norms = reference(batches, clip, 1e-3, 4)
    got = weights(clipped.student)
    assert largest_difference(got, weights(free.student)) > 1e-4  # the clip changed the training
    assert largest_difference(got, expected) < 1e-6
    assert [r["grad_norm"] for r in clipped.history] == pytest.approx(manual_norms, rel=1e-4)  # before clipping
    unclipped, _ = reference(batches, math.inf, 1e-3, 4)
    assert largest_difference(weights(free.student), unclipped) < 1e-6


def test_the_logged_lr_of_each_step_is_the_warmup_cosine_formula(tmp_path):
    peak, warmup, total, floor = 2e-3, 3, 9, 0.2
    state = train(tmp_path, [rows(2, seed=30, length=8)], lr=peak, max_steps=total, warmup_steps=warmup,
                  min_lr_ratio=floor)
    expected = []
    for i in range(total):  # optimizer step i (0-based) is metrics row i + 1
        if i < warmup:
            expected.append(peak * (i + 1) / warmup)
        else:
            expected.append(peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (i - warmup) / (total - warmup)))))
    assert [r["step"] for r in state.history] == list(range(1, total + 1))
    assert [r["lr"] for r in state.history] == pytest.approx(expected, rel=1e-9)
    assert state.history[warmup - 1]["lr"] == pytest.approx(peak)  # the peak is the warm-up's last step


HELD = {2: 3.0, 4: 1.0, 6: 2.0, 8: 1.5}  # the held-out KL measured at each evaluation: step 4 is the lowest
KEYS = {"max_steps": 8, "eval_every": 2, "checkpoint_every": 2, "keep_checkpoints": 1, "keep_best": True}


def held_out(step: int, model) -> dict:
    return {"eval_kl": HELD[step], "eval_top1": 0.5}


def same_weights(model, folder) -> bool:
    saved = load_file(str(folder / "model.safetensors"))
    params = model.state_dict()
    return all(torch.equal(params[k], v) for k, v in saved.items())


def test_the_lowest_held_out_kl_is_kept_beside_the_rotation_and_is_the_student(tmp_path, caplog):
    batches = [rows(4, seed=40 + i) for i in range(8)]
    with caplog.at_level(logging.INFO, logger="kdistill"):
        state = train(tmp_path, batches, held_out, **KEYS)
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best", "step-000008"]  # keep_checkpoints=1 rotated 2, 4, 6
    best = checkpoint.read_state(folder / "best")
    assert best["step"] == 4 and best["best"] == {"step": 4, "key": "eval_kl", "value": 1.0}
    assert checkpoint.checkpoint_problem(folder / "best") is None  # complete and checksummed
    assert checkpoint.read_state(folder / "step-000008")["best"]["step"] == 4  # what a resume reads back
    assert same_weights(state.student, folder / "best") and not same_weights(state.student, folder / "step-000008")
    assert "the student is checkpoints/best, step 4 (eval_kl 1.0000" in caplog.text
    assert "the last step, 8, had 1.5000" in caplog.text
    assert checkpoint.resume_point(tmp_path)[0] == folder / "step-000008"  # best is never a resume point


def test_a_resume_keeps_the_best_so_far(tmp_path, monkeypatch):
    """Stopped after step 6 (best: step 4), resumed: step 8's 1.5 is no better than step 4's 1.0, so the
    best stays step 4. A resume that forgot the best so far would take step 8."""
    batches = [rows(4, seed=40 + i) for i in range(8)]
    straight = train(tmp_path / "straight", batches, held_out, **KEYS)
    real, calls = loop.train_step, {"n": 0}

    def dies_at_step_7(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 7:
            raise RuntimeError("killed")
        return real(*args, **kw)

    monkeypatch.setattr(loop, "train_step", dies_at_step_7)
    with pytest.raises(RuntimeError, match="killed"):
        train(tmp_path / "stopped", batches, held_out, **KEYS)
    monkeypatch.undo()
    folder = tmp_path / "stopped" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best", "step-000006"]
    resumed = train(tmp_path / "stopped", batches, held_out, resume_from=folder / "step-000006", **KEYS)
    assert resumed.best == {"step": 4, "key": "eval_kl", "value": 1.0}
    assert checkpoint.read_state(folder / "best")["step"] == 4
    a, b = straight.student.state_dict(), resumed.student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_keep_best_refuses_a_run_that_evaluates_only_at_its_last_step():
    with pytest.raises(ConfigError, match=r"train.keep_best=true .* train.eval_every=50 and train.max_steps=20 .*"
                                          r"set train.eval_every below 20 \(e.g. train.eval_every=4\)"):
        load_config(None, ["train.keep_best=true", "train.max_steps=20", "train.eval_every=50"])
    assert load_config(None, ["train.keep_best=true", "train.max_steps=20", "train.eval_every=19"]).train.keep_best


class Recorder:
    """A tracker that keeps what it is given."""

    def __init__(self):
        self.logged, self.closed = [], False

    def log(self, row: dict, step: int) -> None:
        self.logged.append((step, row))

    def close(self) -> None:
        self.closed = True


def test_the_step_0_row_reaches_the_trackers_and_metrics_jsonl(tmp_path, monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(loop, "open_trackers", lambda kinds, folder, config: recorder)
    first = {"step": 0, "loss": None, "eval_kl": 4.2, "time": 0.0}
    train(tmp_path, [rows(2, seed=50, length=8)], start_row=first, max_steps=2)
    assert recorder.logged[0] == (0, first) and [s for s, _ in recorder.logged] == [0, 1, 2] and recorder.closed
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 1, 2] and lines[0]["eval_kl"] == 4.2
