"""Evaluation of a student against its teacher (`kdistill distill`'s final comparison and `kdistill eval`,
run/evaluate.py): held-out agreement (`heldout.py`; per aligned group and per byte for a student with its
own tokenizer, `cross_metrics.py`) on text chosen and checked for overlap with training (`eval_data.py`),
benchmarks from task files (`tasks.py`, read by data/task_files.py) with standard errors and baselines
(`chance.py`) and their lm-eval YAMLs (`lm_eval_tasks.py`), exposure (`exposure.py`), measured speed and
memory (`speed.py`), the seed-prompt completions (`completions.py`), and the comparison table and eval.json
(`compare.py`: `measure_against` is what both commands measure; `record.py`: when and how each number was
measured)."""
