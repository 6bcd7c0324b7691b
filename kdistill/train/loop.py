"""The distillation loop, top to bottom: batch -> teacher signal -> loss -> clip -> step -> log.

    state = run_training(cfg.train, Parts(student, source, objective, stream, evaluate, device), run)

Each optimizer step (`step.train_step`) draws `grad_accum` micro-batches, asks the source for their teacher
signal, runs the student and the objective through the DDP/FSDP wrapper, and clips and steps; then the
source hears that the step is done (`after_step`: an EMA teacher follows the student) and the loop writes
the step's row, evaluates and checkpoints when due. The teacher is a source (`kdistill.sources`); the loop
never asks what kind. Metrics go to `metrics.jsonl` (one row per step, `step` and `loss` always present);
held-out evaluation rows carry `eval_kl` (against the teacher) or `eval_<source>_kl` (against another
source, e.g. a cache); a fresh run's step-0 row (`Parts.start_row`, held-out numbers before training)
goes to metrics.jsonl and the trackers first. With `train.keep_best` an evaluation whose held-out KL is the
lowest so far is also written to checkpoints/best, and the student returned is that one. A NaN or an
infinity stops the run, its cause named (teacher signal, loss, gradient or update: `step.NonFinite`),
without a checkpoint of those weights: every checkpoint is checked finite before it is written, so the
last one is good. Ctrl-C (SIGINT) or SIGTERM stops after the current
step with a checkpoint; the command then exits 130 or 143, the shell's codes for those signals.
"""
from __future__ import annotations

import logging
import math
import signal as signals
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from kdistill.base import fsutil
from kdistill.base.errors import KdistillError, TeacherUnavailable
from kdistill.train import checkpoint
from kdistill.train.budget import Budget, StepClock
from kdistill.train.distributed import Dist, Whole, full_optimizer_state, load_into_shards, world_change, wrap
from kdistill.train.precision import Precision, make_precision
from kdistill.train.schedule import make_optimizer, warmup_cosine
from kdistill.train.step import NonFinite, StudentLoss, train_step
from kdistill.train.tracking import open_trackers

log = logging.getLogger("kdistill")
UNSIZED = 10**9  # the cosine's length before a time budget has sized the run (its first steps warm up)
STOP_SIGNALS = {signals.SIGINT: "Ctrl-C", signals.SIGTERM: "SIGTERM"}  # stop after the step, with a checkpoint


class Interrupted(KdistillError):
    """Ctrl-C or SIGTERM: the run stopped after a step and wrote a checkpoint."""

    exit_code = 130  # the shell's convention for a command stopped by SIGINT (128 + the signal's number)

    def __init__(self, message: str, signal_number: int = signals.SIGINT):
        super().__init__(message)
        self.exit_code = 128 + int(signal_number)  # 143 for SIGTERM


@dataclass
class Parts:
    """What a run trains, built by run/distill.py."""
    student: nn.Module
    source: object  # kdistill.sources: signal(batch, vocab), after_step, state_dict, tokenizer
    objective: object  # losses.Objective
    stream: object  # data.batches.BatchStream or a rollout stream: next(), state(), load_state()
    evaluate: Callable[[int, nn.Module], dict]  # (step, student) -> held-out metrics
    device: torch.device
    features: nn.Module | None = None  # train/features.FeatureLoss: trains with the student, checkpointed beside it
    dist: Dist = field(default_factory=Dist)
    record: dict = field(default_factory=dict)  # into every checkpoint's trainer_state.json
    start_row: dict | None = None  # a fresh run's step 0: held-out metrics before training
    budget: Budget = field(default_factory=lambda: Budget(None))  # train.time_budget: sizes the step count
    eval_s: float = 0.0  # seconds of one held-out evaluation (the step-0 one), for the budget


@dataclass
class Engine:
    """What training builds around the student."""
    model: nn.Module  # StudentLoss under its DDP/FSDP wrapper: every forward goes through it
    whole: Whole  # the student, whole (gathered under fsdp), for evaluation and checkpoints
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    precision: Precision | None = None  # train.precision: the forward's autocast, fp16's loss scaler (checkpointed)


@dataclass
class RunState:
    step: int = 0
    tokens: int = 0
    history: list = field(default_factory=list)
    student: object = None
    best: dict | None = None  # train.keep_best: {"step", "key", "value"} of the lowest held-out KL so far
    total: int | None = None  # the steps to train: train.max_steps, or sized by train.time_budget (checkpointed)


def run_training(tc, parts: Parts, run) -> RunState:
    """Train to `tc.max_steps` (`tc`: the config's train section); returns the state, `.student` whole.

    `run` is the run folder (run/folder.RunFolder): metrics and checkpoints go under `run.path`, training
    resumes from `run.resume_from` when set, and `run.on_checkpoint(path)` follows each checkpoint. With
    several processes (`parts.dist`) every process trains its rows of each global batch; the main one writes."""
    dist, student, source = parts.dist, parts.student, parts.source
    state = RunState(total=None if parts.budget else tc.max_steps)  # a budget sizes it once steps are timed
    engine = build(tc, parts, lambda: state.total or UNSIZED)
    if run.resume_from is not None:
        state = resume(run.resume_from, parts, engine, state.total)
    clock = StepClock(parts.budget, tc.max_steps, tc.eval_every, parts.eval_s, sized=state.total is not None)
    trackers = open_trackers(tc.tracker if dist.main else [], run.path, parts.record.get("config", {}))
    if parts.start_row is not None and dist.main:
        fsutil.append_jsonl(run.path / "metrics.jsonl", parts.start_row)
        trackers.log(parts.start_row, 0)
    bar = tqdm(total=state.total, initial=state.step, desc="distilling", unit="step", dynamic_ncols=True,
               disable=not dist.main)
    since = (time.time(), state.tokens)
    student.train()
    before = parts.stream.state()
    try:
        with StopFlag() as stop:
            while state.total is None or state.step < state.total:
                clock.tick()
                before = parts.stream.state()
                micro = [parts.stream.next() for _ in range(tc.grad_accum)]
                numbers = train_step(engine.model, source, engine.optimizer, micro, parts.device,
                                     state.step / (state.total or UNSIZED), tc.grad_clip, dist,
                                     due(tc.debug_every, state.step + 1))
                lr = engine.scheduler.get_last_lr()[0]
                engine.scheduler.step()
                state.step += 1
                state.tokens += numbers["tokens"]
                source.after_step(student, state.step)
                clock.stepped()
                if clock.resize(state, dist):
                    bar.total = state.total
                    bar.refresh()
                row = metrics_row(numbers, state, lr, since, parts, state.total or UNSIZED)
                if due(tc.eval_every, state.step) or state.step == state.total:
                    row.update(evaluate(parts, engine, state.step))
                write_row(row, state, run.path / "metrics.jsonl", trackers, bar, dist.main)
                if tc.keep_best and improved(row, state, dist):  # before the step's checkpoint, which records it
                    save(run, parts, engine, state, tc.keep_checkpoints, checkpoint.BEST)
                done = due(tc.checkpoint_every, state.step) or state.step == state.total
                path = save(run, parts, engine, state, tc.keep_checkpoints) if done else None
                if stop_together(stop, dist) and state.step < state.total:
                    path = path or save(run, parts, engine, state, tc.keep_checkpoints)
                    raise Interrupted(f"stopped by {stop.name} after step {state.step}; checkpoint {path} written. "
                                      "Continue with the same command and --resume", stop.number)
    except NonFinite as e:  # the step's number; no checkpoint holds the step's weights
        raise type(e)(f"step {state.step + 1}: {e}; {checkpoint.last_good(run.path)}") from None
    except TeacherUnavailable as e:  # no step was taken: keep the last one, then stop
        raise type(e)(f"{e}. {stopped_at(run, parts, engine, state, tc, before)}") from None
    finally:  # a failed step ends the bar's line, so the error starts on its own
        bar.close()
        trackers.close()
    state.student = engine.whole.refresh(engine.model).eval()  # what to save and compare: whole on the main process
    if tc.keep_best and dist.main:
        from_best(run, state)
    student.eval()
    return state


def heldout_kl(row: dict) -> str | None:
    """The held-out KL of a metrics row: `eval_kl` (against the teacher), else the first `eval_*kl`."""
    return "eval_kl" if "eval_kl" in row else next((k for k in row if k.startswith("eval_") and k.endswith("kl")),
                                                    None)


def improved(row: dict, state: RunState, dist: Dist) -> bool:
    """Whether the step's held-out KL is the lowest so far (then `state.best` holds it). The main process
    evaluated; every process hears its answer, since writing a checkpoint gathers the weights under fsdp."""
    key = heldout_kl(row)
    better = key is not None and math.isfinite(row[key]) and (state.best is None or row[key] < state.best["value"])
    if better:
        state.best = {"step": state.step, "key": key, "value": float(row[key])}
    return bool(dist.broadcast(better)) if dist.active else better


def from_best(run, state: RunState) -> None:
    """train.keep_best: the weights of checkpoints/best into the student the run saves and evaluates."""
    if state.best is None:
        log.warning("train.keep_best: no held-out KL was measured, so the student is the last step's")
        return
    saved = checkpoint.load_weights(run.path / "checkpoints" / checkpoint.BEST, state.student)
    best = saved.get("best") or state.best
    last = state.history[-1].get(best["key"]) if state.history else None
    log.info("train.keep_best: the student is checkpoints/best, step %d (%s %.4f, the lowest held-out KL%s)",
             best["step"], best["key"], best["value"],
             f"; the last step, {state.step}, had {last:.4f}" if last is not None else "")


def stopped_at(run, parts: Parts, engine: Engine, state: RunState, tc, before: dict | None) -> str:
    """After a step that never happened: a checkpoint of the last completed step, its data position
    `before` the failed step's batches (one process only: several would first have to agree); the
    sentence that says how to continue."""
    if state.step == 0:
        return "No step was taken; run the same command again once the teacher answers"
    if parts.dist.active:
        return "Continue from the last checkpoint with the same command and --resume"
    parts.stream.load_state(before)  # the failed step's batches come first again
    written = run.path / "checkpoints" / f"step-{state.step:06d}"
    path = written if written.is_dir() else save(run, parts, engine, state, tc.keep_checkpoints)
    return f"Checkpoint {path} (step {state.step}) is the last step; continue with the same command and --resume"


def due(every: int, step: int) -> bool:
    return every > 0 and step % every == 0


def build(tc, parts: Parts, total) -> Engine:
    """The wrapped loss module, the optimizer (student and feature projections) and its schedule; `total()`
    the steps the cosine spans (read at every step: a time budget sets it once the steps are timed)."""
    whole = Whole(parts.student, parts.dist)  # before sharding: under fsdp a plain copy for evaluation and checkpoints
    precision = make_precision(tc.precision, parts.device, parts.dist.mode)
    model = wrap(StudentLoss(parts.student, parts.objective, parts.features, precision), parts.dist, parts.device)
    params = [p for p in parts.student.parameters() if p.requires_grad]
    params += list(parts.features.parameters()) if parts.features is not None else []
    optimizer = make_optimizer(params, tc)
    return Engine(model, whole, optimizer, warmup_cosine(optimizer, tc.warmup_steps, total, tc.min_lr_ratio),
                  precision)


def resume(folder: Path, parts: Parts, engine: Engine, total: int | None) -> RunState:
    """Weights, optimizer, schedule, data position, source and feature tensors from the checkpoint `folder`;
    the step count a time budget sized is read back (`total`, from the config, otherwise)."""
    dist = parts.dist
    shards = (lambda sd: load_into_shards(engine.model, engine.whole.copy.state_dict(), engine.optimizer, sd, dist)) \
        if dist.mode == "fsdp" else None
    saved = checkpoint.load_checkpoint(folder, engine.whole.copy, engine.optimizer, engine.scheduler, shards)
    parts.stream.load_state(saved["data"])
    if engine.precision is not None:
        engine.precision.load_state_dict(saved.get("grad_scaler"))  # fp16's loss scale and growth count
    parts.source.load_state_dict(checkpoint.load_source_tensors(folder))
    if parts.features is not None:
        parts.features.load_tensors(checkpoint.load_feature_tensors(folder))
    note = world_change(saved, dist)
    if note and dist.main:
        log.warning(note)
    log.info("resumed from %s at step %d", folder, saved["step"])
    sized = saved.get("budget_steps") if parts.budget else None  # the count the run's budget gave it
    return RunState(step=saved["step"], tokens=saved["tokens"], best=saved.get("best"), total=sized or total)


def save(run, parts: Parts, engine: Engine, state: RunState, keep: int, name: str | None = None) -> Path | None:
    """A checkpoint of the step just taken, in checkpoints/step-NNNNNN or checkpoints/NAME (`checkpoint.BEST`);
    every process calls it (it gathers under fsdp), the main one writes."""
    dist = parts.dist
    plain, optimizer_state = engine.whole.refresh(engine.model), full_optimizer_state(engine.optimizer, dist)
    if not dist.main:
        return None
    extra = {"tokens": state.tokens, "data": parts.stream.state(), "world": dist.world, "distributed": dist.mode,
             **parts.record, **({"best": state.best} if state.best else {}),
             **({"budget_steps": state.total} if parts.budget and state.total else {})}
    # any number of processes resumes: whole state dicts (`world_change`); `best`: read back by `resume`
    scaler = engine.precision.state_dict() if engine.precision is not None else {}
    extra.update({"grad_scaler": scaler} if scaler else {})  # fp16's loss scale, read back by `resume`
    features = parts.features.tensors() if parts.features is not None else None
    with fsutil.writing(run.path / "checkpoints" / (name or f"step-{state.step:06d}")):
        path = checkpoint.save_checkpoint(run.path, state.step, plain, parts.source.tokenizer, engine.optimizer,
                                          engine.scheduler, extra, keep, parts.source.state_dict(), optimizer_state,
                                          features, name)
    if run.on_checkpoint is not None and name is None:  # the best is no resume point
        run.on_checkpoint(path)
    return path


def evaluate(parts: Parts, engine: Engine, step: int) -> dict:
    """Held-out metrics of the whole student (gathering it is collective under fsdp; the main process evaluates)."""
    plain = engine.whole.refresh(engine.model)
    if not parts.dist.main:
        return {}
    metrics = parts.evaluate(step, plain)
    parts.student.train()
    return metrics


def metrics_row(numbers: dict, state: RunState, lr: float, since: tuple[float, int], parts: Parts,
                max_steps: int) -> dict:
    """The step's row of metrics.jsonl: the step's numbers, its learning rate, throughput and schedules."""
    started, tokens_then = since
    rate = (state.tokens - tokens_then) / max(1e-9, time.time() - started)
    return {**numbers, "step": state.step, "lr": lr, "tokens_per_s": rate, "tokens_seen": state.tokens,
            "time": time.time(), **getattr(parts.stream, "last_info", {}),  # rollout_tokens, rollout_staleness
            **parts.objective.schedule_values((state.step - 1) / max_steps)}


def write_row(row: dict, state: RunState, path: Path, trackers, bar, main: bool) -> None:
    if main:
        fsutil.append_jsonl(path, row)
        trackers.log(row, state.step)
    state.history.append(row)
    bar.set_postfix(_postfix(row))
    bar.update(1)


def _postfix(row: dict) -> dict:
    kl = row.get("forward_kl", row.get("kl"))
    held = next((k for k in row if k.startswith("eval_") and k.endswith("kl")), None)
    return {"loss": f"{row['loss']:.3f}", **({"kl": f"{kl:.3f}"} if kl is not None else {}),
            "tok/s": f"{row['tokens_per_s']:.0f}", **({held: f"{row[held]:.3f}"} if held else {})}


def stop_together(stop: StopFlag, dist: Dist) -> bool:
    """Whether Ctrl-C or SIGTERM came; both reach every process (torchrun forwards them), so they agree
    before stopping together."""
    if dist.active:
        stop.set = bool(dist.all_sum(float(stop.set)))
    return stop.set


class StopFlag:
    """Set by Ctrl-C (SIGINT) or SIGTERM while training; the loop stops after the step in progress.
    `number` and `name` say which signal came first (SIGINT when only another process heard one)."""

    def __init__(self):
        self.set, self.number, self._old = False, signals.SIGINT, {}

    @property
    def name(self) -> str:
        return STOP_SIGNALS[self.number]

    def __enter__(self):
        for number in STOP_SIGNALS:
            try:
                self._old[number] = signals.signal(number, self._handle)
            except ValueError:  # not the main thread: the signals are not ours to catch
                break
        return self

    def _handle(self, number, frame):
        if self.set:  # a second signal: stop now, no checkpoint
            if number == signals.SIGTERM:
                raise SystemExit(128 + number)
            raise KeyboardInterrupt
        self.set, self.number = True, signals.Signals(number)
        print(f"\n{self.name}: stopping after this step and writing a checkpoint ({self.name} again to stop at once)",
              flush=True)

    def __exit__(self, *exc):
        for number, old in self._old.items():
            signals.signal(number, old)
