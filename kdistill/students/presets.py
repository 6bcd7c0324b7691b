"""Named student sizes, as data. `None` means "the teacher's value" (so the layers can be copied).

LLaMA-style throughout: pre-norm RMSNorm, GQA, RoPE, SwiGLU, tied embeddings; deep-narrow first.
"""

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
