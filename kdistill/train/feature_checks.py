"""Preflight of hidden-state and attention terms against the teacher's config.json (no weights load).

Run by `preflight.check` before any folder is touched or any model loads: a pair naming a layer that does
not exist (from the teacher's config.json alone when it can be read), attention_map on a teacher whose
attention cannot be recomputed from q_proj/k_proj and rotary embeddings. What needs no file (a cached or
combined teacher has no activations, FSDP, a fractal student) is refused by the config itself
(kdistill/config/checks.py).
"""
from __future__ import annotations

import json
from pathlib import Path

from kdistill.base.errors import ConfigError, KdistillError
from kdistill.losses import build_objective
from kdistill.students.layer_map import check_pairs
from kdistill.students.llama import LLAMA_BLOCKS, resolve_sizes, teacher_sizes


def feature_terms(cfg) -> list:
    return build_objective(cfg.loss.terms, t2_scale=cfg.loss.t2_scale, chunk_size=cfg.loss.chunk_size,
                           memory_budget_mb=cfg.loss.memory_budget_mb, key="loss").features


def teacher_config(cfg):
    """The teacher's config from its config.json (a GGUF teacher: once converted), or None; no weights load."""
    from transformers import AutoConfig

    from kdistill.models.teacher import _gguf_cache_dir, resolve

    if cfg.teacher.cache or cfg.teacher.sources:
        return None
    try:
        folder, gguf = resolve(cfg.teacher.model)
        where = Path(folder) if gguf is None else _gguf_cache_dir(folder, gguf)
        if not (where / "config.json").is_file():
            return None
        json.loads((where / "config.json").read_text())
        return AutoConfig.from_pretrained(str(where), trust_remote_code=cfg.teacher.trust_remote_code)
    except (KdistillError, OSError, ValueError):
        return None  # the teacher's own checks say what is wrong with it


def _check_layers(cfg, term, config) -> None:
    if config is None or cfg.student.kind != "llama":
        return
    if not isinstance(term.pairs, str):
        check_pairs(term.pairs, resolve_sizes(cfg.student, config)["num_layers"],
                    teacher_sizes(config)["num_layers"], f"{term.key}.pairs")
    kind = getattr(config, "model_type", None)
    if term.kind == "attention_map" and kind not in LLAMA_BLOCKS:
        raise ConfigError(f"{term.key} (attention_map) recomputes attention probabilities from q_proj, k_proj and "
                          f"rotary embeddings, which LLaMA-family blocks ({', '.join(LLAMA_BLOCKS)}) have and "
                          f"teacher {cfg.teacher.model} ({kind}) has not; use kind: attention_output (any attention "
                          "implementation) instead")


def check(cfg) -> None:
    """ConfigError for a feature term's pair or kind the teacher's config.json rules out."""
    terms = feature_terms(cfg)
    config = teacher_config(cfg) if terms else None
    for term in terms:
        _check_layers(cfg, term, config)
