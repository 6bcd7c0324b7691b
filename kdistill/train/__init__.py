"""Training: the distillation loop (`loop.py`), checkpoints (`checkpoint.py`), LR schedule (`schedule.py`)."""
