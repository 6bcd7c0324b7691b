"""Mixed precision of training (`train.precision`): the autocast of the student's forward and, for fp16,
the loss scaler that keeps small gradients from flushing to zero.

    precision = make_precision(tc.precision, device, dist.mode)   # once, in train/loop.build
    with precision.autocast(): ...                                # StudentLoss.forward
    precision.scale(loss).backward(); precision.unscale(optimizer)  # train/step.py, before the norm

auto is bf16 on CUDA with bf16, fp16 on CUDA without it, fp32 on CPU and MPS (base/hardware.pick_precision).
bf16 needs no scaler (its exponent is fp32's). fp16 does: each micro-batch's loss is multiplied by the
scale before backward, the gradients are divided by it before the norm is taken (so `grad_norm` and
clipping see the true gradients), and a step whose gradient norm is not finite is the scaler's business,
not an error: the optimizer does not step (the weights stay as they were), the scale halves, and the row
says `skipped_step: 1`. Every fp16 row logs `loss_scale`, the scale its gradients were computed with.
A loss that is not finite is still `NonFiniteLoss` (the forward overflowed; no scale helps), and so are
MAX_SKIPPED skipped steps in a row: the gradients overflow whatever the scale. The scaler's state goes
into every checkpoint's trainer_state.json (`grad_scaler`) and comes back on resume.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

from kdistill.base.hardware import HALF, pick_precision

log = logging.getLogger("kdistill")
MAX_SKIPPED = 20  # skipped fp16 steps in a row before the run stops: the scale has fallen 2**20-fold by then


@dataclass
class Precision:
    """What train.precision resolved to on this device, and fp16's loss scaler."""
    name: str  # fp32 | bf16 | fp16
    device: torch.device
    scaler: torch.amp.GradScaler | None = None  # fp16 only
    skipped_in_row: int = 0

    def autocast(self):
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=HALF[self.name])

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by the scale (and note whether any is inf/NaN), before their norm is taken."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict(), "skipped_in_row": self.skipped_in_row} if self.scaler else {}

    def load_state_dict(self, state: dict | None) -> None:
        """A checkpoint's `grad_scaler`; none (a run saved without fp16) leaves the scaler as new."""
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state["scaler"])
            self.skipped_in_row = int(state.get("skipped_in_row", 0))


def make_precision(requested: str, device: torch.device, dist_mode: str = "none") -> Precision:
    """The Precision of `requested` on `device`; ConfigError (train.precision) for one it cannot run.
    Under fsdp the scaler agrees across processes on whether any shard's gradient overflowed."""
    name = pick_precision(requested, device)
    if name != "fp32" and device.type == "cpu":
        log.warning("train.precision=%s on CPU: autocast to %s is usually much slower than fp32 on a CPU "
                    "(~10-100x here); set train.precision=auto or fp32 unless you are testing", name, name)
    if name != "fp16":
        return Precision(name, device)
    if dist_mode == "fsdp":
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return Precision(name, device, ShardedGradScaler(device.type))
    return Precision(name, device, torch.amp.GradScaler(device.type))
