"""The LLaMA-style student: a plain transformers `LlamaForCausalLM`, sized by preset or explicit fields.

The student always uses the teacher's tokenizer and vocabulary (padded vocabularies are kept: the
student's embedding has the teacher's row count), RoPE settings and norm epsilon. Any causal LM can be
the teacher: its sizes are read whatever the family calls them (GPT-2 `n_embd`/`n_layer`/`n_head`/
`n_inner`, a multimodal model's text config). Only the LLaMA family (`LLAMA_BLOCKS`: same pre-norm
RMSNorm, RoPE, gated MLP, the same parameter names) has blocks a student can copy; Qwen2's q/k/v
biases are kept by giving the student attention biases (o_proj's then starts at zero).
"""
from __future__ import annotations

import difflib

from transformers import LlamaConfig, LlamaForCausalLM

from kdistill.base.errors import ConfigError
from kdistill.config.presets import PRESETS, SIZE_KEYS

LLAMA_BLOCKS = ("llama", "mistral", "qwen2")  # model types whose decoder layers a LlamaDecoderLayer can hold
_QKV_BIAS = ("qwen2",)


def text_config(config):
    """The language model's config: a multimodal config's text part (Gemma 3), else `config` itself."""
    get = getattr(config, "get_text_config", None)
    return get() if get is not None else config


def _first(config, names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def _divisor_at_most(n: int, k: int) -> int:
    """The largest divisor of n that is at most k (at least 1)."""
    return next(d for d in range(max(1, min(n, k)), 0, -1) if n % d == 0)


def teacher_sizes(teacher_config) -> dict:
    """The teacher's sizes under the student's names, from any causal LM config. Head counts are fitted
    so that heads divide the width and KV heads divide the heads (unchanged for any LLaMA teacher)."""
    c = text_config(teacher_config)
    hidden = _first(c, ("hidden_size", "n_embd", "d_model"))
    heads = _first(c, ("num_attention_heads", "n_head", "num_heads"))
    heads = _divisor_at_most(hidden, heads)
    kv = _divisor_at_most(heads, _first(c, ("num_key_value_heads", "num_kv_heads"), heads))
    return {"num_layers": _first(c, ("num_hidden_layers", "n_layer", "num_layers")), "hidden_size": hidden,
            "num_heads": heads, "num_kv_heads": kv,
            "intermediate_size": _first(c, ("intermediate_size", "n_inner", "ffn_dim"), 4 * hidden)}


def llama_blocks_missing(teacher_config) -> str | None:
    """None when the teacher's blocks can be copied into a LLaMA student, else why not."""
    c = text_config(teacher_config)
    kind = getattr(teacher_config, "model_type", None) or "unknown"
    if kind not in LLAMA_BLOCKS:
        return f"teacher architecture {kind} has no LLaMA-compatible blocks"
    head_dim = getattr(c, "head_dim", None)
    if head_dim is not None and head_dim * c.num_attention_heads != c.hidden_size:
        return f"teacher head size {head_dim} x {c.num_attention_heads} heads is not its width {c.hidden_size}"
    return None


def window_dropped(teacher_config) -> str | None:
    """What a LLaMA student (full causal attention) leaves out of a teacher with sliding-window layers."""
    c = text_config(teacher_config)
    window = getattr(c, "sliding_window", None)
    uses = getattr(c, "use_sliding_window", getattr(teacher_config, "model_type", None) == "mistral")
    if window and uses:
        return f"full context (the teacher's sliding window of {window} tokens is not kept)"
    return None


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


def _rope(config, same_blocks: bool) -> dict:
    """The teacher's RoPE for a LLaMA-family teacher; otherwise plain RoPE at the teacher's base (GPT-2
    has none, Phi rotates part of each head, Gemma 3 keeps one per attention type)."""
    rope = getattr(config, "rope_parameters", None)
    if same_blocks and rope:
        return rope
    if isinstance(rope, dict) and "rope_type" not in rope:  # per attention type: the global one
        rope = rope.get("full_attention") or next(iter(rope.values()), None)
    theta = (rope or {}).get("rope_theta") if isinstance(rope, dict) else None
    return {"rope_type": "default", "rope_theta": theta or getattr(config, "rope_theta", None) or 10000.0}


def _token_id(teacher_config, text, name: str):
    value = getattr(text, name, None)
    return value if value is not None else getattr(teacher_config, name, None)


def student_config(sizes: dict, teacher_config, vocab_size: int) -> LlamaConfig:
    t = text_config(teacher_config)
    same_blocks = llama_blocks_missing(teacher_config) is None
    kind = getattr(teacher_config, "model_type", None)
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=sizes["hidden_size"], intermediate_size=sizes["intermediate_size"],
        num_hidden_layers=sizes["num_layers"], num_attention_heads=sizes["num_heads"],
        num_key_value_heads=sizes["num_kv_heads"],
        hidden_act=(getattr(t, "hidden_act", None) or "silu") if same_blocks else "silu",
        max_position_embeddings=_first(t, ("max_position_embeddings", "n_positions"), 2048),
        rms_norm_eps=_first(t, ("rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps", "norm_eps"), 1e-5),
        rope_parameters=_rope(t, same_blocks), tie_word_embeddings=True,
        bos_token_id=_token_id(teacher_config, t, "bos_token_id"),
        eos_token_id=_token_id(teacher_config, t, "eos_token_id"),
        pad_token_id=_token_id(teacher_config, t, "pad_token_id"),
        attention_bias=same_blocks and (kind in _QKV_BIAS or bool(getattr(t, "attention_bias", False))),
        mlp_bias=same_blocks and bool(getattr(t, "mlp_bias", False)),
    )


def build_llama(sizes: dict, teacher_config, vocab_size: int, token_ids: dict | None = None) -> LlamaForCausalLM:
    """`token_ids`: bos/eos/pad ids of the student's own tokenizer (student.tokenizer), else the teacher's."""
    config = student_config(sizes, teacher_config, vocab_size)
    for name, value in (token_ids or {}).items():
        setattr(config, name, value)
    return LlamaForCausalLM(config)
