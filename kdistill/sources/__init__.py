"""Teacher sources: what a run talks to when it needs the teacher, whatever the teacher is.

The kind of teacher is decided once, here (`open_source`); the training loop, held-out evaluation and the
final comparison only use the interface below and never ask which kind they have. A new kind of teacher
(an EMA of the student, several teachers, a teacher server) is a new class, not a new branch.

| member                        | meaning                                                              |
|-------------------------------|----------------------------------------------------------------------|
| against                       | what metrics measured with it are against: "teacher", "cache", ...  |
| tokenizer, vocab_size         | the tokenizer the student reads (the teacher's, but for `student.tokenizer`) and its rows |
| static                        | its signal for a batch never changes (False for an EMA of the student) |
| can_score_new_text            | False for a cache: it holds signals for its own tokens only          |
| provides_activations          | True when intermediate activations can be asked for                  |
| init_model                    | the model that initialises the student (None: shapes only)           |
| load_examples(cfg, device)    | the run's token examples (a cache holds its own)                     |
| collate(examples, pad_id)     | a batch: input_ids, attention_mask, targets, mask (+ what it needs)  |
| signal(batch, vocab_size)     | DenseSignal or SparseSignal at every position, on the student's vocab |
| signal_and_activations(batch, vocab_size, request) | the signal and {layer: {name: tensor}} from one forward (`activations.capture`); sources without activations raise ConfigError |
| references()                  | sources to evaluate against during training (self, maybe the teacher) |
| final_reference(cfg, ...)     | a model source for the final comparison, or None                     |
| identity()                    | JSON-able name and fingerprint, recorded in checkpoints              |
| state_dict() / load_state_dict| its own tensors for checkpoints (name -> tensor; {} for none)         |
| attach_student(student)       | called once the student exists (an EMA source copies it)             |
| after_step(student, step)     | called after each optimizer step                                     |
| release_init()                | free what only the student's initialisation needed                   |
"""
from __future__ import annotations


def open_source(cfg, device, dtype):
    """The run's teacher source: several (`teacher.sources`), a cache (`teacher.cache`), else the model (read
    through its own tokenizer when the student has another: `student.tokenizer`, `cross.py`)."""
    if cfg.teacher.sources:
        from kdistill.sources.multi import MultiSource

        return MultiSource.open(cfg, device, dtype)
    if cfg.teacher.cache:
        from kdistill.sources.cached import CacheSource

        return CacheSource.open(cfg, device, dtype)
    from kdistill.sources.model import ModelSource

    teacher = ModelSource.load(cfg, device, dtype)
    if cfg.student.tokenizer:  # the student reads another tokenizer: signals per aligned group of tokens
        from kdistill.sources.cross import CrossTokenizerSource, load_student_tokenizer

        return CrossTokenizerSource(teacher, load_student_tokenizer(cfg.student.tokenizer), cfg.student.tokenizer,
                                    copy_embeddings=cfg.student.kind == "llama" and cfg.student.init == "teacher")
    return teacher
