"""What a teacher source does when it has nothing of its own to do (see the table in `sources/__init__`)."""
from __future__ import annotations


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
