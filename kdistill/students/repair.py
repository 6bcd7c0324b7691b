"""Repair the residual stream of a student made of fewer teacher layers, before training.

A student of 4 of the teacher's 30 layers reads, at every kept layer and at the final norm, a residual
stream the dropped layers no longer built: its scale and mix of channels are those of a deeper network,
and the student starts close to a uniform guess (held-out KL ~8.9 nats on SmolLM2-135M -> 4 layers).
Training cannot fix a scale quickly: AdamW moves each weight by about `lr` per step, so 60 steps at
5e-4 change a norm gain of ~1 by at most a few percent.

The repair fits, on the calibration tokens the layer choice used, a few thousand numbers that set those
scales, to the teacher's next-token distributions (mean KL(teacher || student), every position):
- every RMSNorm gain, per channel (each layer's two and the final one), and
- one scale for each layer's attention output and one for its MLP output, folded into `o_proj` and
  `down_proj` (and their biases) at the end,
all multiplicative (gain = gain0 * exp(s), s from 0), by Adam for `steps` steps, keeping the best step.
The student stays a plain LlamaForCausalLM; nothing else changes. Measured in README "Quality per
compute" (scripts/bench_quality.py).
"""
from __future__ import annotations

import logging
import time

import torch
from torch import nn

from kdistill.losses.fused.chunked import fused_linear_loss
from kdistill.models.heads import decoder, decoder_layers, head_weight
from kdistill.students.init import TeacherTargets

log = logging.getLogger("kdistill")


def _wide(x: torch.Tensor) -> torch.Tensor:
    """fp32 for a half-precision tensor, else as it is (fp64 stays fp64)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _lse(hidden: torch.Tensor, weight: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Sum over rows of logsumexp(hidden @ weight.T), a chunk of rows at a time with its gradient
    (softmax) taken at once (losses/fused/chunked.py: memory one (chunk, V) block, no recompute in backward).
    Shapes: hidden (N, D), weight (V, D) -> ()"""
    def block(logits: torch.Tensor, rows: slice):
        s = logits.detach()
        lse = s.logsumexp(-1, keepdim=True)
        return lse.sum(), s.sub_(lse).exp_()  # d Σ lse / d logits = softmax, over the chunk's own logits

    return fused_linear_loss(hidden, weight, block, chunk)


def _kl(targets: TeacherTargets, hidden: torch.Tensor) -> torch.Tensor:
    """Mean KL(teacher || softmax(hidden @ W.T)) over rows, differentiable in `hidden`. Shapes: (N, D) -> ()"""
    linear = (targets.negentropy - _wide((hidden * targets.mean_row).sum(-1))).sum()
    return (linear + _lse(hidden, targets.weight)) / hidden.shape[0]


def _norms(student) -> list[nn.Module]:
    """Every RMSNorm-like module with a gain vector: each layer's two, then the final norm."""
    found = []
    for layer in decoder_layers(student):
        found += [layer.input_layernorm, layer.post_attention_layernorm]
    return found + [decoder(student).norm]


def _outputs(student) -> list[nn.Linear]:
    """The linear maps whose outputs enter the residual stream: each layer's o_proj and down_proj."""
    return [m for layer in decoder_layers(student) for m in (layer.self_attn.o_proj, layer.mlp.down_proj)]


def repairable(student) -> bool:
    """True for a LLaMA-family student (norm gains and o_proj/down_proj where the repair looks for them)."""
    try:
        return all(getattr(n, "weight", None) is not None for n in _norms(student)) and bool(_outputs(student))
    except (AttributeError, TypeError):
        return False


def _names(student, modules: list[nn.Module]) -> list[str]:
    where = {id(m): name for name, m in student.named_modules()}
    return [where[id(m)] for m in modules]


def _row_slices(mask: torch.Tensor, rows: int) -> list[tuple[slice, slice]]:
    """(batch rows, target rows) of each pass of at most `rows` batch rows: the targets are the
    batch's masked positions in row-major order. Shapes: mask (B, T) bool"""
    counts = [0] + mask.sum(1).cumsum(0).tolist()
    return [(slice(i, min(i + rows, len(mask))), slice(counts[i], counts[min(i + rows, len(mask))]))
            for i in range(0, len(mask), rows)]


def repair_scales(student, batch: dict, targets: TeacherTargets, steps: int = 20, lr: float = 0.05,
                  rows_per_pass: int = 16, seconds: float | None = None) -> dict:
    """Fit norm gains (per channel) and residual output scales of `student` in place;
    returns a report. `targets` holds the teacher's distributions at the batch's masked positions in
    row-major order, against the student's own (tied) output layer. Adam at a constant `lr` on every
    row; the step with the lowest KL is kept (step 0, the plain copy, included: never worse than it).
    Each step runs `rows_per_pass` batch rows at a time (gradients summed, weighted by masked positions:
    the same step as one pass over all rows, memory of one pass). `seconds`: no step starts after that
    (train.time_budget's share, measured from the call); the steps taken are scored as usual.

    Shapes: batch {"input_ids", "attention_mask", "mask"} (B, T); targets over N = mask.sum() rows."""
    inner = decoder(student)
    norms, outputs = _norms(student), _outputs(student)
    gain_names = [f"{n}.weight" for n in _names(inner, norms)]
    out_names = _names(inner, outputs)
    gains0 = [n.weight.detach().clone() for n in norms]
    outs0 = {f"{n}.{k}": getattr(m, k).detach().clone() for n, m in zip(out_names, outputs)
             for k in ("weight", "bias") if getattr(m, k, None) is not None}
    log_gain = [torch.zeros(g.shape, requires_grad=True) for g in gains0]
    log_out = torch.zeros(len(outputs), requires_grad=True)
    keep = batch["mask"].bool()
    passes = _row_slices(keep, rows_per_pass)
    total = int(keep.sum())

    def fitted(gain: list[torch.Tensor], out: torch.Tensor) -> dict[str, torch.Tensor]:
        """The repaired tensors by parameter name, as functions of the log-scales."""
        found = {name: g0 * s.exp().to(g0.dtype) for name, g0, s in zip(gain_names, gains0, gain)}
        for k, name in enumerate(out_names):
            for key in (f"{name}.weight", f"{name}.bias"):
                if key in outs0:
                    found[key] = outs0[key] * out[k].exp().to(outs0[key].dtype)
        return found

    def snapshot():
        return [s.detach().clone() for s in log_gain], log_out.detach().clone()

    frozen = [(p, p.requires_grad) for p in student.parameters()]
    was_training = student.training
    student.requires_grad_(False).eval()
    opt = torch.optim.Adam(log_gain + [log_out], lr=lr)
    history, best = [], snapshot()
    start = time.perf_counter()
    try:
        for step in range(steps + 1):
            if seconds is not None and 0 < step < steps and time.perf_counter() - start >= seconds:
                steps = step  # out of time: this pass only scores the last update
            opt.zero_grad(set_to_none=True)
            loss = 0.0
            for rows, target_rows in passes:
                n = target_rows.stop - target_rows.start
                if n == 0:
                    continue
                inputs = {"input_ids": batch["input_ids"][rows], "attention_mask": batch["attention_mask"][rows],
                          "use_cache": False}
                with torch.set_grad_enabled(step < steps):  # the last step is only scored
                    hidden = torch.func.functional_call(inner, fitted(log_gain, log_out), args=(), kwargs=inputs)
                    part = _kl(targets.rows(target_rows), hidden.last_hidden_state[keep[rows]]) * (n / total)
                if step < steps:
                    part.backward()
                loss += part.item()
            history.append(loss)
            if history[-1] <= min(history):
                best = snapshot()
            if step < steps:
                opt.step()
            else:
                break  # the last pass (a time budget may make it an early one) only scores
        with torch.no_grad():
            for name, value in fitted(*best).items():
                inner.get_parameter(name).copy_(value)
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
        student.train(was_training)
    log.info("repair: calibration KL %.3f -> %.3f in %d steps", history[0], min(history), steps)
    scales = best[1].exp().tolist()
    return {"calibration_kl_before": round(history[0], 4), "calibration_kl_after": round(min(history), 4),
            "steps": steps, "attention_scales": [round(s, 3) for s in scales[0::2]],
            "mlp_scales": [round(s, 3) for s in scales[1::2]]}


@torch.no_grad()
def teacher_targets(teacher, batch: dict, weight: torch.Tensor, rows: int = 4) -> TeacherTargets:
    """The teacher's next-token distributions at the batch's masked positions, against the student's
    output layer `weight` (over its vocabulary: a padded teacher vocabulary's extra ids are left out),
    computed `rows` rows at a time. Shapes: batch (B, T), weight (V, D) -> N = mask.sum() rows"""
    parts = []
    for i in range(0, batch["input_ids"].shape[0], rows):
        logits = teacher(input_ids=batch["input_ids"][i:i + rows], attention_mask=batch["attention_mask"][i:i + rows],
                         use_cache=False).logits
        lp = logits[batch["mask"][i:i + rows].bool()][:, :weight.shape[0]].float().log_softmax(-1)
        del logits
        if lp.shape[1] < weight.shape[0]:  # the student's padded rows: ids the teacher never predicts
            lp = torch.nn.functional.pad(lp, (0, weight.shape[0] - lp.shape[1]), value=float("-inf"))
        parts.append(TeacherTargets(lp, weight.detach()))
    return TeacherTargets.concat(parts)


def repair_from_teacher(student, teacher, batch: dict, steps: int, seconds: float | None = None) -> dict:
    """`repair_scales` against `teacher` on `batch`, the student on the batch's device for the fit;
    `seconds` (the teacher's targets included) as in repair_scales."""
    start = time.perf_counter()
    student.to(batch["input_ids"].device)
    targets = teacher_targets(teacher, batch, head_weight(student))
    left = None if seconds is None else max(0.0, seconds - (time.perf_counter() - start))
    report = repair_scales(student, batch, targets, steps=steps, seconds=left)
    return {**report, "seconds": round(time.perf_counter() - start, 1)}
