"""The `rollout` config section (on-policy distillation, kdistill/data/rollout.py) and its range checks."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RolloutConfig:
    """On-policy distillation (kdistill/data/rollout.py): some steps train on text a model writes."""

    source: str = "data"
    """data (off-policy: the data's own text), student (the student continues the data's prompts: GKD,
    MiniLLM) or teacher (the teacher continues them: sequence-level KD)."""
    lmbda: float = 0.5
    """Fraction of steps whose batch is generated (GKD's lambda); 0 = the data only."""
    max_new_tokens: int = 64
    """Tokens generated per prompt; prompts are cut from the left to train.seq_len - max_new_tokens."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts (1 = the student's own distribution)."""
    top_p: float = 1.0
    buffer: int = 1
    """Each generated batch serves this many rollout steps (1 = fresh every time; staleness is logged and
    the loss's importance ratio uses the log-probabilities recorded at generation)."""
    prompt_tokens: int = 32
    """Plain text: the first tokens of each block are the prompt. Instruction records: the prompt part."""
    teacher_mix: float = 0.0
    """MiniLLM's alpha: sample each token from alpha * teacher + (1 - alpha) * student (0 = student only)."""

    @property
    def on_policy(self) -> bool:
        return self.source != "data" and self.lmbda > 0


def rollout_checks(cfg) -> list[tuple[str, bool, str]]:
    r = cfg.rollout
    return [
        ("rollout.source", r.source in ("data", "student", "teacher"), "must be data, student or teacher"),
        ("rollout.lmbda", 0 <= r.lmbda <= 1, "must be between 0 and 1"),
        ("rollout.max_new_tokens", r.max_new_tokens >= 1, "must be at least 1"),
        ("rollout.max_new_tokens", not r.on_policy or r.max_new_tokens < cfg.train.seq_len,
         f"must be below train.seq_len={cfg.train.seq_len}: no prompt token would remain"),
        ("rollout.temperature", r.temperature > 0, "must be positive"),
        ("rollout.top_p", 0 < r.top_p <= 1, "must be in (0, 1]"),
        ("rollout.buffer", r.buffer >= 1, "must be at least 1"),
        ("rollout.prompt_tokens", r.prompt_tokens >= 1, "must be at least 1"),
        ("rollout.teacher_mix", 0 <= r.teacher_mix < 1, "must be in [0, 1)"),
    ]
