"""The run's examples: read and rendered from `data.path`, or written by the teacher when there is none.

    examples = load_examples(cfg, teacher, tokenizer, teacher_id, device)   # [{"ids", "mask"}, ...]
"""
from __future__ import annotations

from .files import read_records
from .generate import examples_from_generated, generate_records
from .render import render


def load_examples(cfg, teacher, tokenizer, teacher_id: str, device) -> list[dict]:
    """Token examples of at most `train.seq_len` + 1 ids; `teacher` is used only to generate data."""
    if not cfg.data.path:
        records = generate_records(teacher, tokenizer, teacher_id, cfg.data.generate, device)
        return examples_from_generated(records, cfg.train.seq_len)
    records = read_records(cfg.data.path, cfg.data.split, cfg.data.max_records)
    return render(records, tokenizer, cfg.train.seq_len, cfg.data.format, cfg.data.text_field, cfg.data.path)
