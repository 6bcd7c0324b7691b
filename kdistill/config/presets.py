"""Named student sizes and the learning rates that go with them, as data: the one table of presets.

`None` (or a key left out) means "the teacher's value", so the teacher's layers can be copied unchanged.
LLaMA-style throughout: pre-norm RMSNorm, GQA, RoPE, SwiGLU, tied embeddings; deep-narrow first.
`student.preset` takes a name from PRESETS; `student.*` size keys override a preset's values, and
kdistill/students/llama.py fills the rest from the teacher when it loads.
"""
from __future__ import annotations

from typing import Literal

PRESETS: dict[str, dict] = {
    # Teacher width, a quarter of its depth: teacher layers and embeddings copy over unchanged.
    "auto": {"layer_fraction": 0.27},
    "teacher-width-4l": {"num_layers": 4},
    "teacher-width-8l": {"num_layers": 8},
    "teacher-width-12l": {"num_layers": 12},
    # Narrow students (random layers; the embedding is projected from the teacher's when widths differ).
    "nano": {"num_layers": 4, "hidden_size": 128, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 384},
    "micro": {"num_layers": 8, "hidden_size": 256, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 768},
    "mini": {"num_layers": 16, "hidden_size": 384, "num_heads": 6, "num_kv_heads": 2, "intermediate_size": 1024},
    # Seed 001 (xinSLM v04): ~1B deep-narrow student for a 7B+ teacher with a 32k vocabulary.
    "xinslm-1b": {"num_layers": 24, "hidden_size": 1536, "num_heads": 16, "num_kv_heads": 4,
                  "intermediate_size": 4096},
}

SIZE_KEYS = ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "intermediate_size")
WIDTH_KEYS = ("hidden_size", "num_heads", "num_kv_heads", "intermediate_size")
TEACHER_WIDTH = tuple(name for name, sizes in PRESETS.items() if not set(WIDTH_KEYS) & set(sizes))
"""The presets that keep the teacher's width (their layers copy over unchanged)."""

# The type of `student.preset`: the table's names (a Literal built from the table, so there is one list).
PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]

# Default peak learning rates (train.lr empty), measured with scripts/bench_quality.py (README "Quality
# per compute").
SHALLOW_LR = 2e-3  # teacher layers, no span fit: best of 5e-4, 2e-3, 3e-3, 5e-3 on 4- and 8-layer students
FITTED_LR = 1e-3  # after the span fit: best of 5e-4, 1e-3, 2e-3 (8 layers), kept on 4
OTHER_LR = 5e-4  # fractal, pretrained, random init


def keeps_teacher_width(student) -> bool:
    """Whether a student config is a LLaMA student of the teacher's own layers and embeddings, unchanged (the
    teacher's width and tokenizer)."""
    return (student.kind == "llama" and student.init == "teacher" and student.preset in TEACHER_WIDTH
            and not student.tokenizer and all(getattr(student, k) is None for k in WIDTH_KEYS))


def span_fit_runs(student) -> bool:
    """Whether a student config asks for a span fit that will run (at the teacher's width, its tokenizer)."""
    return keeps_teacher_width(student) and student.span_fit_steps > 0


def default_freeze(student) -> bool:
    """train.freeze_embeddings when it is left empty: true when the student's embeddings are the teacher's
    unchanged (docs/benchmarks.md, "Frozen embeddings": a step without the output layer's weight gradient
    and the update of its 28M weights is 10 to 19% shorter; within ten minutes the extra steps end with a
    lower KL at 8 layers and level at 4)."""
    return keeps_teacher_width(student)


def default_lr(student) -> float:
    """train.lr when it is left empty: by what the student starts from."""
    if span_fit_runs(student):
        return FITTED_LR
    return SHALLOW_LR if student.kind == "llama" and student.init == "teacher" else OTHER_LR
