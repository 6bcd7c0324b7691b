"""Teacher sources: what a run talks to when it needs the teacher, whatever the teacher is.

The kind of teacher is decided once, here (`open_source`); the training loop, held-out evaluation and the
final comparison only use its members and never ask which kind they have. A new kind of teacher
(an EMA of the student, several teachers, a teacher server) is a new class, not a new branch.

Every source has the members of `base.TeacherSource` (each documented there once); `base.py` also says
which kinds there are and what each gives for the student's initialisation and for rollouts.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the kinds are imported only when opened: `import kdistill.sources` loads no model code
    from kdistill.sources.base import TeacherSource


def open_source(cfg, device, dtype) -> TeacherSource:
    """The run's teacher source: several (`teacher.sources`), a server (`teacher.server`), a cache
    (`teacher.cache`), else the model (its signal kept per row with `teacher.reuse_topk`: `reuse.py`; read
    through its own tokenizer when the student has another: `student.tokenizer`, `cross.py`)."""
    if cfg.teacher.sources:
        from kdistill.sources.multi import MultiSource

        return MultiSource.open(cfg, device, dtype)
    if cfg.teacher.server:
        from kdistill.sources.served import ServedSource

        return ServedSource.open(cfg, device, dtype)
    if cfg.teacher.cache:
        from kdistill.sources.cached import CacheSource

        return CacheSource.open(cfg, device, dtype)
    from kdistill.sources.model import ModelSource

    teacher = ModelSource.load(cfg, device, dtype)
    if cfg.teacher.reuse_topk:  # each row's top-K kept at its first visit (checks.reuse_refusals says when)
        from kdistill.sources.reuse import ReuseSource

        return ReuseSource(teacher, cfg.teacher.reuse_topk, cfg.teacher.reuse_max_mb)
    if cfg.student.tokenizer:  # the student reads another tokenizer: signals per aligned group of tokens
        from kdistill.sources.cross import CrossTokenizerSource, load_student_tokenizer

        return CrossTokenizerSource(teacher, load_student_tokenizer(cfg.student.tokenizer), cfg.student.tokenizer,
                                    copy_embeddings=cfg.student.kind == "llama" and cfg.student.init == "teacher")
    return teacher
