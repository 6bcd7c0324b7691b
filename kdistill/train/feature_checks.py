"""Preflight of hidden-state and attention terms against the teachers' config.json (no weights load).

Run by `preflight.check` before any folder is touched or any model loads: a pair naming a layer that does
not exist (from each teacher's config.json alone when it can be read: teacher.model, and every `model:`
entry of teacher.sources), attention_map on a teacher whose attention cannot be recomputed from q_proj/k_proj
and rotary embeddings, pairs from_init/span against a teacher of teacher.sources the student was not copied
from. What needs no file (a cache has no activations, combine=route, a fractal student) is refused by the
config itself (kdistill/config/checks.py).
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


def teacher_config(cfg, spec: str | None = None):
    """The config of teacher.model (or of `spec`, a teacher.sources model) from its config.json (a GGUF
    teacher: once converted), or None; no weights load."""
    from transformers import AutoConfig

    from kdistill.models.teacher import _gguf_cache_dir, resolve

    if spec is None and (cfg.teacher.cache or cfg.teacher.sources):
        return None
    try:
        folder, gguf = resolve(spec or cfg.teacher.model)
        where = Path(folder) if gguf is None else _gguf_cache_dir(folder, gguf)
        if not (where / "config.json").is_file():
            return None
        json.loads((where / "config.json").read_text())
        return AutoConfig.from_pretrained(str(where), trust_remote_code=cfg.teacher.trust_remote_code)
    except (KdistillError, OSError, ValueError):
        return None  # the teacher's own checks say what is wrong with it


def _check_layers(cfg, term, config, student_config=None, where: str = "", spec: str | None = None) -> None:
    if config is None or cfg.student.kind != "llama":
        return
    if not isinstance(term.pairs, str):
        check_pairs(term.pairs, resolve_sizes(cfg.student, student_config or config)["num_layers"],
                    teacher_sizes(config)["num_layers"], f"{term.key}.pairs{where}")
    kind = getattr(config, "model_type", None)
    if term.kind == "attention_map" and kind not in LLAMA_BLOCKS:
        raise ConfigError(f"{term.key} (attention_map) recomputes attention probabilities from q_proj, k_proj and "
                          f"rotary embeddings, which LLaMA-family blocks ({', '.join(LLAMA_BLOCKS)}) have and "
                          f"teacher {spec or cfg.teacher.model} ({kind}) has not; use kind: attention_output (any "
                          "attention implementation) instead")


def _check_sources(cfg, terms: list) -> None:
    """Each `model:` entry of teacher.sources: its layers and blocks, and from_init/span only against the
    first (the teacher the student is copied from; an EMA pairs each layer with its own shadow)."""
    models = [(i, e) for i, e in enumerate(cfg.teacher.sources) if isinstance(e, dict) and e.get("model")]
    configs = [teacher_config(cfg, e["model"]) for _, e in models]
    for term in terms:
        for n, ((i, entry), config) in enumerate(zip(models, configs)):
            if n and term.pairs in ("from_init", "span") and entry.get("weight", 1.0):
                raise ConfigError(f"{term.key}.pairs={term.pairs} pairs the student's layers with the teacher they "
                                  f"were copied from, {models[0][1].get('name')} (the first model of "
                                  f"teacher.sources), not teacher.sources[{i}] ({entry.get('name')}); use pairs: "
                                  "uniform or cka, which each teacher resolves against its own layers")
            _check_layers(cfg, term, config, configs[0], f" (teacher.sources {entry.get('name')})", entry["model"])


def check(cfg) -> None:
    """ConfigError for a feature term's pair or kind a teacher's config.json rules out."""
    terms = feature_terms(cfg)
    if terms and cfg.teacher.sources:
        return _check_sources(cfg, terms)
    config = teacher_config(cfg) if terms else None
    for term in terms:
        _check_layers(cfg, term, config)
