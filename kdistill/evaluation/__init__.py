"""Evaluation of a student against its teacher: held-out agreement (`heldout.py`), measured speed and
memory (`speed.py`), and the comparison table and eval.json (`compare.py`)."""
