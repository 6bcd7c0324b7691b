"""Evaluation of a student against its teacher (`kdistill eval`): held-out agreement (`heldout.py`) on text
chosen and checked for overlap with training (`eval_data.py`), benchmarks from JSONL, BIG-bench and
lm-eval task files (`tasks.py`, `read_bigbench.py`, `read_lm_eval.py`) with standard errors and baselines
(`chance.py`) and their lm-eval YAMLs (`lm_eval_tasks.py`), measured speed and memory (`speed.py`), the
seed-prompt completions (`completions.py`), and the comparison table and eval.json (`compare.py`,
`record.py`: when and how each number was measured, `command.py`)."""
