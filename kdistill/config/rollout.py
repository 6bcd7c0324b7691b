"""The `rollout` config section (on-policy distillation, kdistill/data/rollout.py) and its range checks."""
from __future__ import annotations

from dataclasses import dataclass

from kdistill.config.checks import refuse_failed
from kdistill.config.choices import RolloutSource


@dataclass
class RolloutConfig:
    """On-policy distillation (kdistill/data/rollout.py): some steps train on text a model writes."""

    source: RolloutSource = "data"
    """data (off-policy: the data's own text), student (the student continues the data's prompts: GKD,
    MiniLLM) or teacher (the teacher continues them: sequence-level KD)."""
    lmbda: float = 0.5
    """Fraction of steps whose batch is generated (GKD's lambda); 0 = the data only."""
    max_new_tokens: int = 64
    """Tokens generated per prompt; prompts are cut from the left to train.seq_len - max_new_tokens."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts (1 = the student's own distribution)."""
    top_p: float = 1.0
    """Nucleus sampling of the rollouts (1 = off)."""
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

    def validate(self) -> None:
        refuse_failed([
            ("rollout.lmbda", 0 <= self.lmbda <= 1, "must be between 0 and 1"),
            ("rollout.max_new_tokens", self.max_new_tokens >= 1, "must be at least 1"),
            ("rollout.temperature", self.temperature > 0, "must be positive"),
            ("rollout.top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("rollout.buffer", self.buffer >= 1, "must be at least 1"),
            ("rollout.prompt_tokens", self.prompt_tokens >= 1, "must be at least 1"),
            ("rollout.teacher_mix", 0 <= self.teacher_mix < 1, "must be in [0, 1)"),
        ])
