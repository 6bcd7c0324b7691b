"""Evaluation of a student against its teacher (`kdistill eval`): held-out agreement (`heldout.py`),
benchmarks from local JSONL files (`tasks.py`) and their lm-eval YAMLs (`lm_eval_tasks.py`), measured
speed and memory (`speed.py`), and the comparison table and eval.json (`compare.py`, `command.py`)."""
