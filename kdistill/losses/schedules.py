"""Schedules for loss weights and temperatures, and the entropy-driven dynamic temperature.

A config value is a number (constant) or a dict with a "schedule" key; `progress` is step / total_steps
in [0, 1] (clamped).

| schedule | keys                          | value at progress x                                        |
|----------|-------------------------------|------------------------------------------------------------|
| constant | value                         | value                                                      |
| linear   | start, end                    | start + (end - start) · x                                  |
| cosine   | start, end                    | end + (start - end) · (1 + cos(π x)) / 2                   |
| step     | values [v0..vn], boundaries [b1..bn] ascending in (0, 1] | v_i where i = number of b_j <= x |
| entropy  | confident, uncertain (temperature only) | per token: confident + (uncertain - confident) · h |

Dynamic temperature (seed 002, "soft target matching with dynamic temperature"): per token, h is the
teacher's normalised entropy at T = 1, h = H(p) / log(n) in [0, 1], with n the size of the teacher's
support (V for a dense teacher without -inf, K or K + 1 for a sparse one). A confident teacher (h near 0)
gets `confident` (typically the higher temperature, to expose its ranking of the alternatives); an
uncertain one (h near 1) gets `uncertain` (its distribution is already soft). The temperature is a
constant of the loss: no gradient flows through it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from kdistill.losses.signals import NEG, entropy, teacher_logprobs


@dataclass(frozen=True)
class Schedule:
    """A value of training progress. Build with `parse_schedule`; call with progress in [0, 1]."""

    kind: str = "constant"
    start: float = 0.0
    end: float = 0.0
    values: tuple[float, ...] = ()
    boundaries: tuple[float, ...] = ()

    def __call__(self, progress: float = 0.0) -> float:
        x = min(max(float(progress), 0.0), 1.0)
        if self.kind == "linear":
            return self.start + (self.end - self.start) * x
        if self.kind == "cosine":
            return self.end + (self.start - self.end) * (1 + math.cos(math.pi * x)) / 2
        if self.kind == "step":
            return self.values[sum(b <= x for b in self.boundaries)]
        return self.start

    def bounds(self) -> tuple[float, float]:
        """The smallest and largest value the schedule takes."""
        vals = self.values if self.kind == "step" else (self.start, self.end)
        return min(vals), max(vals)


@dataclass(frozen=True)
class EntropyTemperature:
    """Per-token temperature from the teacher's normalised entropy (module docstring)."""

    confident: float = 2.0
    uncertain: float = 1.0

    def __call__(self, teacher, missing: str = "renormalize") -> Tensor:
        """Shapes: teacher signal over rows (...) -> (...)"""
        with torch.no_grad():
            logprobs = teacher_logprobs(teacher, 1.0, missing)
            support = (logprobs > NEG / 2).sum(-1).clamp(min=2)
            h = (entropy(logprobs) / support.to(logprobs.dtype).log()).clamp(0.0, 1.0)
            return self.confident + (self.uncertain - self.confident) * h

    def bounds(self) -> tuple[float, float]:
        return min(self.confident, self.uncertain), max(self.confident, self.uncertain)
