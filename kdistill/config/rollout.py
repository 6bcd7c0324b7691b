"""The `rollout` config section (on-policy distillation, kdistill/data/rollout.py), each key with its range."""
from __future__ import annotations

from dataclasses import dataclass

from kdistill.config.choices import RolloutSource
from kdistill.config.ranges import ranged


@dataclass
class RolloutConfig:
    """On-policy distillation (kdistill/data/rollout.py): some steps train on text a model writes."""

    source: RolloutSource = "data"
    """data (off-policy: the data's own text), student (the student continues the data's prompts: GKD,
    MiniLLM) or teacher (the teacher continues them: sequence-level KD)."""
    lmbda: float = ranged(0.5, "[0, 1]")
    """Fraction of steps whose batch is generated (GKD's lambda); 0 = the data only."""
    max_new_tokens: int = ranged(64, ">= 1")
    """Tokens generated per prompt; prompts are cut from the left to train.seq_len - max_new_tokens."""
    temperature: float = ranged(1.0, "> 0")
    """Sampling temperature of the rollouts (1 = the student's own distribution)."""
    top_p: float = ranged(1.0, "(0, 1]", "1 = off")
    """Nucleus sampling of the rollouts (1 = off)."""
    buffer: int = ranged(1, ">= 1")
    """Each generated batch serves this many rollout steps (1 = fresh every time; staleness is logged and
    the loss's importance ratio uses the log-probabilities recorded at generation)."""
    prompt_tokens: int = ranged(32, ">= 1")
    """Plain text: the first tokens of each block are the prompt. Instruction records: the prompt part."""
    teacher_mix: float = ranged(0.0, "[0, 1)")
    """MiniLLM's alpha: sample each token from alpha * teacher + (1 - alpha) * student (0 = student only)."""

    @property
    def on_policy(self) -> bool:
        return self.source != "data" and self.lmbda > 0

    def validate(self) -> None:
        """Every key of this section is a range (kdistill/config/ranges.py) or a choice; the check against
        train.seq_len is in kdistill/config/checks.py."""
