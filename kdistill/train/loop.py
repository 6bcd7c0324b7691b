"""The distillation loop, top to bottom: batches -> teacher signal -> student -> objective -> step.

The teacher is a source (`kdistill.sources`): the loop asks it for the signal of each batch and tells it
when an optimizer step is done; it never asks what kind of teacher it is. Each optimizer step draws
`grad_accum` micro-batches first and counts their loss tokens, so the objective divides by the global
token count and the step's loss and gradient do not depend on how the batch was split. Metrics go to
`metrics.jsonl` (one row per step, `step` and `loss` always present); held-out evaluation rows carry
`eval_kl` (against the teacher) or `eval_<source>_kl` (against another source, e.g. a cache). A
non-finite loss stops the run before the optimizer touches the weights, keeping the last good
checkpoint. Ctrl-C stops after the current step with a checkpoint.
"""
from __future__ import annotations

import logging
import math
import signal as signals
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from kdistill.base import fsutil
from kdistill.base.errors import KdistillError
from kdistill.data.batches import take_rows, to_device
from kdistill.models.heads import head_weight
from kdistill.train import checkpoint, debug
from kdistill.train.distributed import (
    Dist,
    StudentLoss,
    Whole,
    full_optimizer_state,
    load_into_shards,
    world_change,
    wrap,
)
from kdistill.train.tracking import open_trackers

log = logging.getLogger("kdistill")


class NonFiniteLoss(KdistillError):
    pass


class Interrupted(KdistillError):
    """Ctrl-C: the run stopped after a step and wrote a checkpoint."""


@dataclass
class RunState:
    step: int = 0
    tokens: int = 0
    history: list = field(default_factory=list)
    student: object = None


def train_step(student, source, objective, micro_batches, device, progress: float, model=None,
               dist: Dist | None = None, features=None) -> dict:
    """Forward/backward over the micro-batches of one optimizer step. Returns summed loss and terms.

    The micro-batches are the global batch; with several processes each keeps its own rows
    (`dist.local_rows`) and the token count that divides the loss stays the global one. `model` is the
    (wrapped) `StudentLoss` of student and objective; `features` (train/features.FeatureLoss, inside
    `model`) asks the source for the teacher's activations of its layers with each signal."""
    dist = dist or Dist()
    model = model if model is not None else StudentLoss(student, objective, features)
    num_tokens = sum(int(b["mask"].sum()) for b in micro_batches)
    vocab = head_weight(student).shape[0]
    total, terms = 0.0, {}
    for batch in micro_batches:
        batch = to_device(take_rows(batch, dist.local_rows(batch["mask"].shape[0])), device)
        if features is None:
            signal, acts = source.signal(batch, vocab), None
        else:
            signal, acts = source.signal_and_activations(batch, vocab, features.teacher_request)
        loss, parts = model(batch, signal, num_tokens, progress, acts)
        (loss * dist.loss_scale if dist.active else loss).backward()
        total += loss.item()
        for k, v in parts.items():
            terms[k] = terms.get(k, 0.0) + v
    summed = dist.sum_dict({"loss": total, **terms})
    if not math.isfinite(summed["loss"]):
        raise NonFiniteLoss(f"the loss became {summed['loss']} at this step; the weights were not "
                            "updated and the last good checkpoint is kept. Lower train.lr or check the data")
    return {**summed, "tokens": num_tokens}


class StopFlag:
    """Set by Ctrl-C (SIGINT) while training; the loop stops after the step in progress."""

    def __init__(self):
        self.set = False

    def __enter__(self):
        try:
            self._old = signals.signal(signals.SIGINT, self._handle)
        except ValueError:  # not the main thread: Ctrl-C is not ours to catch
            self._old = None
        return self

    def _handle(self, *_):
        if self.set:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.set = True
        print("\nCtrl-C: stopping after this step and writing a checkpoint (Ctrl-C again to stop at once)",
              flush=True)

    def __exit__(self, *exc):
        if self._old is not None:
            signals.signal(signals.SIGINT, self._old)


def _postfix(row: dict, rate: float) -> dict:
    kl = row.get("forward_kl", row.get("kl"))
    held = next((k for k in row if k.startswith("eval_") and k.endswith("kl")), None)
    return {"loss": f"{row['loss']:.3f}", **({"kl": f"{kl:.3f}"} if kl is not None else {}),
            "tok/s": f"{rate:.0f}", **({held: f"{row[held]:.3f}"} if held else {})}


def run_training(cfg, student, source, tokenizer, objective, stream, evaluate, device, output_dir,
                 resume_from=None, record: dict | None = None, on_checkpoint=None, dist: Dist | None = None,
                 features=None) -> RunState:
    """Train to cfg.train.max_steps; `evaluate(step, student)` returns a dict of held-out metrics.

    `record` goes into every checkpoint's trainer_state.json (the resolved config, the teacher's
    identity); `on_checkpoint(path)` is called after each checkpoint is complete. With several
    processes (`dist`) every process trains its rows of each global batch; only the main one writes.
    `features` (train/features.FeatureLoss): hidden-state/attention terms; their projections train with the
    student and are checkpointed beside it (features.safetensors), never in student/."""
    tc, dist = cfg.train, dist or Dist()
    whole = Whole(student, dist)  # before sharding: under fsdp a plain copy for evaluation and checkpoints
    model = wrap(StudentLoss(student, objective, features), dist, device)
    params = [p for p in student.parameters() if p.requires_grad] + list(features.parameters() if features else [])
    from kdistill.train.schedule import make_optimizer, warmup_cosine

    optimizer = make_optimizer(params, tc)
    scheduler = warmup_cosine(optimizer, tc.warmup_steps, tc.max_steps, tc.min_lr_ratio)
    state = RunState()
    if resume_from is not None:
        shards = (lambda sd: load_into_shards(model, whole.copy.state_dict(), optimizer, sd, dist)) \
            if dist.mode == "fsdp" else None
        saved = checkpoint.load_checkpoint(resume_from, whole.copy, optimizer, scheduler, shards)
        state.step, state.tokens = saved["step"], saved["tokens"]
        stream.load_state(saved["data"])
        source.load_state_dict(checkpoint.load_source_tensors(resume_from))
        if features is not None:
            features.load_tensors(checkpoint.load_feature_tensors(resume_from))
        note = world_change(saved, dist)
        if note and dist.main:
            log.warning(note)
        log.info("resumed from %s at step %d", resume_from, state.step)
    metrics_path = output_dir / "metrics.jsonl"

    def save():
        plain, optimizer_state = whole.refresh(model), full_optimizer_state(optimizer, dist)  # collective
        if not dist.main:
            return None
        extra = {"tokens": state.tokens, "data": stream.state(), "world": dist.world, "distributed": dist.mode,
                 **(record or {})}  # any number of processes resumes: whole state dicts (`world_change`)
        with fsutil.writing(output_dir / "checkpoints" / f"step-{state.step:06d}"):
            path = checkpoint.save_checkpoint(output_dir, state.step, plain, tokenizer, optimizer, scheduler,
                                              extra, tc.keep_checkpoints, source.state_dict(), optimizer_state,
                                              features.tensors() if features is not None else None)
        if on_checkpoint is not None:
            on_checkpoint(path)
        return path

    trackers = open_trackers(tc.tracker if dist.main else [], output_dir, (record or {}).get("config", {}))
    student.train()
    bar = tqdm(total=tc.max_steps, initial=state.step, desc="distilling", unit="step", dynamic_ncols=True,
               disable=not dist.main)
    t_start, tokens_start = time.time(), state.tokens
    try:
        with StopFlag() as stop:
            while state.step < tc.max_steps:
                micro = [stream.next() for _ in range(tc.grad_accum)]
                row = train_step(student, source, objective, micro, device, state.step / tc.max_steps, model, dist,
                                 features)
                debugging = tc.debug_every > 0 and (state.step + 1) % tc.debug_every == 0
                shards = dist if dist.mode == "fsdp" else None  # ddp gradients are already whole on every process
                grads = debug.layer_grad_norms(student, shards) if debugging else None
                norm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)  # a DTensor under fsdp
                grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
                if not math.isfinite(grad_norm):
                    raise NonFiniteLoss(f"the gradient norm became {grad_norm} at step {state.step + 1}, first in "
                                        f"{debug.first_non_finite(student)}; the weights were not updated and the last "
                                        "good checkpoint is kept. Lower train.lr")
                before = debug.snapshot(student) if debugging else None
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                lr = scheduler.get_last_lr()[0]
                scheduler.step()
                state.step += 1
                state.tokens += row["tokens"]
                source.after_step(student, state.step)
                rate = (state.tokens - tokens_start) / max(1e-9, time.time() - t_start)
                row.update(step=state.step, lr=lr, grad_norm=grad_norm, tokens_per_s=rate, tokens_seen=state.tokens,
                           time=time.time(), **getattr(stream, "last_info", {}),  # rollout_tokens, rollout_staleness
                           **objective.schedule_values((state.step - 1) / tc.max_steps),
                           **(debug.layer_report(student, grads, before, shards, dist.main) if debugging else {}))
                if state.step % tc.eval_every == 0 or state.step == tc.max_steps:
                    plain = whole.refresh(model)  # collective under fsdp
                    if dist.main:
                        row.update(evaluate(state.step, plain))
                        student.train()
                if dist.main:
                    fsutil.append_jsonl(metrics_path, row)
                    trackers.log(row, state.step)
                state.history.append(row)
                bar.set_postfix(_postfix(row, rate))
                bar.update(1)
                due = state.step % tc.checkpoint_every == 0 or state.step == tc.max_steps
                path = save() if due else None
                if dist.active:  # Ctrl-C reaches every process; stop together
                    stop.set = bool(dist.all_sum(float(stop.set)))
                if stop.set and state.step < tc.max_steps:
                    path = path or save()
                    raise Interrupted(f"stopped by Ctrl-C after step {state.step}; checkpoint {path} written. "
                                      "Continue with the same command and --resume")
    finally:  # a failed step ends the bar's line, so the error starts on its own
        bar.close()
        trackers.close()
    state.student = whole.refresh(model).eval()  # what to save and compare: whole on the main process
    student.eval()
    return state
