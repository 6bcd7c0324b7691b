"""Preflight for `student.tokenizer`: its tokenizer and the data, checked before a model loads.

What a cross-tokenizer run cannot do (a teacher cache, teacher-written data, on-policy rollouts,
per-token loss kinds, benchmark tasks, a fractal student) is refused by the config itself
(kdistill/config/checks.py). Here: the student's tokenizer loads, and for each teacher whose tokenizer can
be read without loading the model (a folder: teacher.model, or each model of teacher.sources) the data's
responses are encoded by both tokenizers now (text one cannot encode losslessly is named), and a pair
with no shared strings is reported (hybrid then falls back to uld).
"""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("kdistill")


def check_cross(cfg) -> None:
    """The student's tokenizer loads and reads the data; with a teacher folder, so does the teacher's."""
    if not cfg.student.tokenizer:
        return
    from kdistill.data.token_bytes import reading
    from kdistill.sources.cross import load_student_tokenizer

    student = load_student_tokenizer(cfg.student.tokenizer)
    reading(student)
    specs = [e["model"] for e in cfg.teacher.sources if isinstance(e, dict) and e.get("model")] \
        if cfg.teacher.sources else [cfg.teacher.model]
    for spec in specs:
        teacher_dir = Path(spec).expanduser()
        if spec != "default" and (teacher_dir / "tokenizer.json").is_file():
            check_pair(cfg, student, load_student_tokenizer(str(teacher_dir)))


def check_pair(cfg, student, teacher) -> None:
    """Both tokenizers encode every response losslessly (DataError naming it); no shared strings is said."""
    from kdistill.data.files import read_records
    from kdistill.data.pairs import render_pairs
    from kdistill.data.token_bytes import vocab_bytes
    from kdistill.losses.cross.alignment import string_pairs

    records = read_records(cfg.data.path, cfg.data.split, cfg.data.max_records)
    render_pairs(records, student, teacher, cfg.train.seq_len, 4 * cfg.train.seq_len, cfg.data.format,
                 cfg.data.text_field, cfg.data.path)
    s_ids, _ = string_pairs(vocab_bytes(student), vocab_bytes(teacher))
    if s_ids.numel() == 0 and any(isinstance(t, dict) and t.get("kind") == "hybrid" for t in cfg.loss.terms):
        msg = ("student.tokenizer: the student's and the teacher's vocabularies share no strings; loss kind "
               "hybrid falls back to uld only")
        log.warning(msg)
        print(msg, flush=True)
