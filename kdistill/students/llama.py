"""The LLaMA-style student: a plain transformers `LlamaForCausalLM`, sized by preset or explicit fields.

The student always uses the teacher's tokenizer and vocabulary (padded vocabularies are kept: the
student's embedding has the teacher's row count), RoPE settings and RMSNorm epsilon.
"""
from __future__ import annotations

import difflib

from transformers import LlamaConfig, LlamaForCausalLM

from ..errors import ConfigError
from .presets import PRESETS, SIZE_KEYS


def teacher_sizes(teacher_config) -> dict:
    c = teacher_config
    return {"num_layers": c.num_hidden_layers, "hidden_size": c.hidden_size,
            "num_heads": c.num_attention_heads,
            "num_kv_heads": getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
            "intermediate_size": c.intermediate_size}


def resolve_sizes(student_cfg, teacher_config) -> dict:
    """Preset, then explicit `student.*` fields, then the teacher's values for anything left open."""
    if student_cfg.preset not in PRESETS:
        near = difflib.get_close_matches(student_cfg.preset, PRESETS, n=1)
        hint = f"did you mean '{near[0]}'?" if near else f"choose one of {', '.join(PRESETS)}"
        raise ConfigError(f"student.preset: unknown preset '{student_cfg.preset}'; {hint}")
    preset = dict(PRESETS[student_cfg.preset])
    base = teacher_sizes(teacher_config)
    if "layer_fraction" in preset:
        preset["num_layers"] = max(2, round(base["num_layers"] * preset.pop("layer_fraction")))
    sizes = {k: preset.get(k) for k in SIZE_KEYS}
    for k in SIZE_KEYS:
        if getattr(student_cfg, k) is not None:
            sizes[k] = getattr(student_cfg, k)
        if sizes[k] is None:
            sizes[k] = base[k]
    if sizes["hidden_size"] % sizes["num_heads"]:
        raise ConfigError(f"student.num_heads={sizes['num_heads']} must divide student.hidden_size="
                          f"{sizes['hidden_size']}")
    if sizes["num_heads"] % sizes["num_kv_heads"]:
        raise ConfigError(f"student.num_kv_heads={sizes['num_kv_heads']} must divide student.num_heads="
                          f"{sizes['num_heads']} (grouped-query attention)")
    return sizes


def student_config(sizes: dict, teacher_config, vocab_size: int) -> LlamaConfig:
    t = teacher_config
    rope = getattr(t, "rope_parameters", None) or {"rope_type": "default",
                                                   "rope_theta": getattr(t, "rope_theta", 10000.0)}
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=sizes["hidden_size"], intermediate_size=sizes["intermediate_size"],
        num_hidden_layers=sizes["num_layers"], num_attention_heads=sizes["num_heads"],
        num_key_value_heads=sizes["num_kv_heads"], hidden_act="silu",
        max_position_embeddings=getattr(t, "max_position_embeddings", 2048),
        rms_norm_eps=getattr(t, "rms_norm_eps", 1e-5), rope_parameters=rope, tie_word_embeddings=True,
        bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id, pad_token_id=t.pad_token_id,
        attention_bias=False, mlp_bias=False,
    )


def build_llama(sizes: dict, teacher_config, vocab_size: int) -> LlamaForCausalLM:
    return LlamaForCausalLM(student_config(sizes, teacher_config, vocab_size))
