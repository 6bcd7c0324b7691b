"""One optimizer step: micro-batches -> teacher signal -> student + objective -> backward -> clip -> step.

    model = wrap(StudentLoss(student, objective, features), dist, device)   # train/distributed.py
    row = train_step(model, source, optimizer, micro_batches, device, progress, grad_clip, dist)

`StudentLoss` is the student's forward and the fused objective as one module, so a DDP/FSDP wrapper runs
both and sees every use of the output layer's weight (read inside the forward, unsharded under FSDP).
The step calls the wrapper, never the module inside it. The objective is `losses.objective.Objective`;
its default path is `losses/fused/` (the logits one chunk at a time, closed-form gradients).

Gradient accumulation: the micro-batches are the step's global batch. Their loss tokens are counted first
and every micro-batch's loss is divided by that count (`losses.reduce_tokens`), so the summed gradients
are the full batch's however it is split. With several processes each keeps its rows of every
micro-batch (`dist.local_rows`) and multiplies its loss by the number of processes, which the wrappers'
gradient average divides out.

A NaN or an infinity stops the step, each cause with its own error and fix: a teacher signal that is not
finite (`NonFiniteTeacher`: the teacher is broken, a lower lr will not help), a loss or gradient norm that
is not finite with a finite teacher (`NonFiniteLoss`: lower train.lr, check the data), both before the
optimizer touches the weights; and weights that the optimizer's update made non-finite
(`NonFiniteUpdate`: the step size is too large). The loop then stops without writing a checkpoint of
those weights. Under train.precision=fp16 a gradient norm that is not finite is the loss scaler's
business instead (train/precision.py): the step is skipped, the weights stay, the scale halves, and only
`precision.MAX_SKIPPED` such steps in a row stop the run (`NonFiniteLoss`).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from kdistill.base.errors import KdistillError
from kdistill.data.batches import take_rows, to_device
from kdistill.data.packing import model_inputs
from kdistill.models.activations import capture
from kdistill.models.heads import final_hidden, head_weight
from kdistill.train import debug
from kdistill.train.distributed import Dist
from kdistill.train.precision import MAX_SKIPPED, Precision, make_precision


class NonFinite(KdistillError):
    """A NaN or an infinity stopped the step; the subclass says where."""


class NonFiniteTeacher(NonFinite):
    """The teacher's signal holds NaN or +inf (broken weights or cache); the optimizer did not step."""


class NonFiniteLoss(NonFinite):
    """The loss or the gradient norm became NaN or infinite with a finite teacher; the optimizer did not step."""


class NonFiniteUpdate(NonFinite):
    """The optimizer's step made a weight NaN or infinite from a finite loss and gradient norm."""


KEPT = "the weights were not updated"


def inner(model: nn.Module) -> StudentLoss:
    """The `StudentLoss` inside a DDP wrapper (FSDP2 shards it in place), for reading, never for calling."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def accumulate_gradients(model: nn.Module, source, micro_batches: list[dict], device: torch.device,
                         progress: float, dist: Dist | None = None) -> dict:
    """Forward and backward over the micro-batches of one optimizer step; the gradients stay in `.grad`.

    `model`: a `StudentLoss`, wrapped or not; `source` (kdistill.sources) gives the teacher's signal of
    each micro-batch, with the teacher's activations when `model` has feature terms. Returns the loss and
    each logged term summed over micro-batches and processes, and `tokens`, the step's global count."""
    dist = dist or Dist()
    student, features = inner(model).student, inner(model).features
    num_tokens = sum(int(b["mask"].sum()) for b in micro_batches)
    vocab = head_weight(student).shape[0]
    total, terms, teacher = 0.0, {}, None
    for batch in micro_batches:
        batch = to_device(take_rows(batch, dist.local_rows(batch["mask"].shape[0])), device)
        if features is None:
            signal, acts = source.signal(batch, vocab), None
        else:
            signal, acts = source.signal_and_activations(batch, vocab, features.teacher_request)
        loss, parts = model(batch, signal, num_tokens, progress, acts)
        inner(model).precision.scale(loss * dist.loss_scale if dist.active else loss).backward()
        total += loss.item()
        if teacher is None and not math.isfinite(total):  # whose fault: looked at only when it went wrong
            teacher = debug.non_finite_teacher(signal, acts)
        for k, v in parts.items():
            terms[k] = terms.get(k, 0.0) + v
    summed = dist.sum_dict({"loss": total, "teacher_not_finite": float(teacher is not None), **terms})
    if summed.pop("teacher_not_finite"):
        raise NonFiniteTeacher(
            f"the teacher's signal is not finite (in {teacher or 'another process'}), so the loss became "
            f"{summed['loss']}; {KEPT}. The teacher is broken, not the training, and a lower train.lr will not "
            "help: look for NaN or inf in the weights of teacher.model, or rebuild teacher.cache from a good teacher")
    if not math.isfinite(summed["loss"]):
        broken = broken_weights(student)
        cause = broken or ("the teacher's signal and the student's weights are finite, so the student's "
                           "logits overflowed")
        fp16 = (" (train.precision=fp16: the student's activations may have overflowed float16, whose largest "
                "value is 65504; set train.precision=bf16 where the GPU has it, or fp32)"
                if inner(model).precision.name == "fp16" and not broken else "")
        raise NonFiniteLoss(f"the loss became {summed['loss']}: {cause}{fp16}; {KEPT}. Lower train.lr (or raise "
                            "train.warmup_steps), or check the data")
    return {**summed, "tokens": num_tokens}


def broken_weights(student: nn.Module) -> str | None:
    """What the error says when a weight of `student` is NaN or infinite, else None."""
    broken = debug.first_non_finite_weight(student)
    return f"the student's weights are not finite (first in {broken})" if broken else None


def train_step(model: nn.Module, source, optimizer: torch.optim.Optimizer, micro_batches: list[dict],
               device: torch.device, progress: float, grad_clip: float | None, dist: Dist | None = None,
               debugging: bool = False) -> dict:
    """One optimizer step: gradients of the micro-batches, clipped to norm `grad_clip` (0 or None: not
    clipped, as HF/TRL's max_grad_norm=0), step, zero grad.

    Returns what the loop logs: `loss`, each term, `tokens`, `grad_norm` (before clipping; of the
    unscaled gradients under fp16, whose rows add `loss_scale` and `skipped_step`) and, when `debugging`,
    per-layer gradient norms and update ratios (train/debug.py)."""
    dist = dist or Dist()
    row = accumulate_gradients(model, source, micro_batches, device, progress, dist)
    student, precision = inner(model).student, inner(model).precision
    precision.unscale(optimizer)  # fp16: the true gradients from here on
    shards = dist if dist.mode == "fsdp" else None  # ddp gradients are already whole on every process
    grads = debug.layer_grad_norms(student, shards) if debugging else None
    params = [p for group in optimizer.param_groups for p in group["params"]]
    # max_norm inf scales by 1: the norm (logged either way) without clipping; a DTensor under fsdp
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip or math.inf)
    grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    if not math.isfinite(grad_norm) and precision.scaler is not None:
        return {**row, "grad_norm": grad_norm, **skip_step(precision, optimizer, student)}
    if not math.isfinite(grad_norm):
        broken = broken_weights(student)  # a NaN weight can leave the loss finite (CPU attention may drop it)
        raise NonFiniteLoss(f"the gradient norm became {grad_norm}, first in {debug.first_non_finite(student)}"
                            f"{': ' + broken if broken else ''}; {KEPT}. Lower train.lr")
    before = debug.snapshot(student) if debugging else None
    scaled = step_optimizer(precision, optimizer)
    optimizer.zero_grad(set_to_none=True)
    check_update(optimizer, student, grad_norm, dist)
    report = debug.layer_report(student, grads, before, shards, dist.main) if debugging else {}
    return {**row, "grad_norm": grad_norm, **scaled, **report}


def step_optimizer(precision: Precision, optimizer: torch.optim.Optimizer) -> dict:
    """optimizer.step(); under fp16 the scaler's update (the scale may grow) and the row's entries."""
    # fp16 too: the gradients are unscaled and finite (their norm is); scaler.step would hand its
    # found-inf tensor to fused AdamW, which fails on FSDP2's DTensor state
    optimizer.step()
    if precision.scaler is None:
        return {}
    scale = precision.scaler.get_scale()  # the scale this step's gradients were computed with
    precision.scaler.update()  # from unscale_'s found-inf, all zero here
    precision.skipped_in_row = 0
    return {"loss_scale": scale, "skipped_step": 0}


def skip_step(precision: Precision, optimizer: torch.optim.Optimizer, student: nn.Module) -> dict:
    """fp16 with a gradient that is not finite: no optimizer step, the scale lowered (the scaler saw the
    inf/NaN when unscaling, on every process); NonFiniteLoss after MAX_SKIPPED such steps in a row."""
    scale = precision.scaler.get_scale()
    precision.skipped_in_row += 1
    if precision.skipped_in_row >= MAX_SKIPPED:
        raise NonFiniteLoss(f"{MAX_SKIPPED} steps in a row had a gradient that is not finite (first in "
                            f"{debug.first_non_finite(student)}) under train.precision=fp16, though the loss scale "
                            f"fell to {scale:g}: the gradients overflow whatever the scale; {KEPT}. Set "
                            "train.precision=bf16 where the GPU has it, or fp32, or lower train.lr")
    precision.scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return {"loss_scale": scale, "skipped_step": 1}


def check_update(optimizer: torch.optim.Optimizer, student: nn.Module, grad_norm: float, dist: Dist) -> None:
    """NonFiniteUpdate when the step just taken left a trained weight NaN or infinite (on any process)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    broken = 0.0 if debug.all_finite(params) else 1.0
    if not dist.all_sum(broken):
        return
    where = debug.first_non_finite_weight(student) or "a feature projection or another process's shard"
    lr = optimizer.param_groups[0]["lr"]
    raise NonFiniteUpdate(f"the optimizer's update made the weights non-finite (first in {where}) from a finite "
                          f"loss and gradient norm ({grad_norm:.3g}): the step size is too large (the learning "
                          f"rate of this step was {lr:g}). Lower train.lr; these weights are not checkpointed")


class StudentLoss(nn.Module):
    """The student's forward and the fused objective as one module: what a DDP/FSDP wrapper runs.

    Shapes: batch input_ids (B, T) ... -> loss (), terms dict of floats

    `features` (train/features.FeatureLoss: hidden-state and attention terms with their projections) is
    a submodule, so the wrapper sees the projections; the student's activations are captured by hooks
    inside this forward and compared with `teacher_acts` (the source's, same batch)."""

    def __init__(self, student, objective, features=None, precision: Precision | None = None):
        super().__init__()
        self.student, self.objective, self.features = student, objective, features
        self.precision = precision  # train/precision.py; None: train.precision=auto on the first batch's device

    def forward(self, batch: dict, signal, num_tokens: int, progress: float, teacher_acts: dict | None = None):
        device = batch["input_ids"].device
        if self.precision is None:
            self.precision = make_precision("auto", device)
        request = self.features.student_request if self.features is not None else {}
        with self.precision.autocast(), capture(self.student, request) as found:
            hidden = final_hidden(self.student, **model_inputs(batch, self.student))  # packed: block mask
        loss, terms = hidden.new_zeros((), dtype=torch.float32), {}
        if self.objective.terms:
            out = self.objective(hidden, head_weight(self.student), signal, batch["targets"], batch["mask"],
                                 num_tokens, progress=progress, behaviour_logprobs=batch.get("behaviour_logprobs"),
                                 token_weight=batch.get("weight"))
            loss, terms = out.loss, out.terms
        if self.features is not None:
            extra, logs = self.features(found, teacher_acts, batch, num_tokens, progress)
            loss, terms = loss + extra, {**terms, **logs}
        return loss, terms
