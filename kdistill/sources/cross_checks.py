"""Preflight for `student.tokenizer`: what a cross-tokenizer run cannot do is refused before a model loads.

Refused, each naming the key and the fix: a teacher cache (it holds the teacher's signal on its own tokens
only), several teachers, teacher-written data and on-policy rollouts (text the teacher has not read),
per-token loss kinds (forward_kl ... compare token ids; use hybrid or uld), benchmark tasks (scored with
one tokenizer), a fractal student. When the teacher's tokenizer can be read without loading the model
(a folder), the data's responses are encoded by both tokenizers now (text one cannot encode losslessly is
named), and a pair with no shared strings is reported (hybrid then falls back to uld).
"""
from __future__ import annotations

import logging
from pathlib import Path

from kdistill.base.errors import ConfigError

log = logging.getLogger("kdistill")
CROSS_TERMS = ("ce", "uld", "hybrid")


def _refusals(cfg) -> list[str]:
    why = []
    if cfg.teacher.cache:
        why.append(f"teacher.cache={cfg.teacher.cache} holds the teacher's signal for its own tokens only, not "
                   "what aligning another tokenizer needs; drop teacher.cache and use the live teacher "
                   "(teacher.model)")
    if cfg.teacher.sources:
        why.append("teacher.sources: several teachers across tokenizers are not supported; use one teacher.model")
    if not cfg.data.path:
        why.append("data.path is empty: teacher-written data across tokenizers is not supported yet; write the "
                   "teacher's samples to a file (e.g. with a same-tokenizer run's data) and give data.path")
    if cfg.rollout.on_policy:
        why.append("rollout: on-policy text would need the teacher to read the student's text again; set "
                   "rollout.lmbda=0")
    for i, term in enumerate(cfg.loss.terms):
        kind = term.get("kind") if isinstance(term, dict) else None
        if kind not in CROSS_TERMS:
            why.append(f"loss.terms[{i}].kind={kind} compares token by token; across tokenizers use kind hybrid "
                       "(exact on shared strings + uld) or uld, and ce")
    if cfg.eval.tasks:
        why.append("eval.tasks are scored with one tokenizer for both models; run them on the student alone")
    if cfg.student.kind == "fractal":
        why.append("student.kind=fractal is built on the teacher's vocabulary; use kind llama or pretrained")
    return why


def check_cross(cfg) -> None:
    """ConfigError for what a cross-tokenizer run cannot do; the data checked with both tokenizers."""
    if not cfg.student.tokenizer:
        return
    why = _refusals(cfg)
    if why:
        raise ConfigError(f"student.tokenizer={cfg.student.tokenizer}: " + "; ".join(why))
    from kdistill.data.token_bytes import reading
    from kdistill.sources.cross import load_student_tokenizer

    student = load_student_tokenizer(cfg.student.tokenizer)
    reading(student)
    teacher_dir = Path(cfg.teacher.model).expanduser()
    if cfg.teacher.model != "default" and (teacher_dir / "tokenizer.json").is_file():
        check_pair(cfg, student, load_student_tokenizer(str(teacher_dir)))


def check_pair(cfg, student, teacher) -> None:
    """Both tokenizers encode every response losslessly (DataError naming it); no shared strings is said."""
    from kdistill.data.files import read_records
    from kdistill.data.pairs import render_pairs
    from kdistill.data.token_bytes import vocab_bytes
    from kdistill.losses.alignment import string_pairs

    records = read_records(cfg.data.path, cfg.data.split, cfg.data.max_records)
    render_pairs(records, student, teacher, cfg.train.seq_len, 4 * cfg.train.seq_len, cfg.data.format,
                 cfg.data.text_field, cfg.data.path)
    s_ids, _ = string_pairs(vocab_bytes(student), vocab_bytes(teacher))
    if s_ids.numel() == 0 and any(isinstance(t, dict) and t.get("kind") == "hybrid" for t in cfg.loss.terms):
        msg = ("student.tokenizer: the student's and the teacher's vocabularies share no strings; loss kind "
               "hybrid falls back to uld only")
        log.warning(msg)
        print(msg, flush=True)
