"""What a teacher source does when it has nothing of its own to do (see the table in `sources/__init__`)."""
from __future__ import annotations

from kdistill.base.errors import ConfigError


def no_activations(source) -> ConfigError:
    """The refusal of a source that holds output signals only (a cache, several teachers combined)."""
    return ConfigError(f"the teacher source '{source.against}' holds the teacher's output signal only, no "
                       "hidden states or attention; hidden_*/attention_* loss terms need one live teacher model "
                       "(teacher.model without teacher.cache or teacher.sources)")


class Quiet:
    """Defaults for a source with no state and nothing to do between steps."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def attach_student(self, student) -> None:
        pass

    def after_step(self, student, step: int) -> None:
        pass

    def release_init(self) -> None:
        pass

    def signal_and_activations(self, batch: dict, vocab_size: int, request: dict):
        raise no_activations(self)
