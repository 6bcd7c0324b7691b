"""Checks that need two sections of the config; each section checks its own keys in its `validate()`.

Two kinds, each check in one place:
- `check_agreement(cfg)`: keys of different sections that contradict each other. Run by `validate`, so
  by `load_config`: such a config means nothing.
- `check_supported(cfg)`: valid keys whose combination a distill run does not support (a cached teacher
  has no activations, another tokenizer cannot reuse a cache, ...). Run by `kdistill/run/preflight.py`
  before any folder is touched or any model loads; each message names the keys and the fix.
"""
from __future__ import annotations

from kdistill.base.errors import ConfigError

FEATURE_WHAT = {"hidden_mse": "hidden states", "hidden_cosine": "hidden states",
                "attention_output": "attention outputs", "attention_map": "attention maps"}
CROSS_TERMS = ("ce", "uld", "hybrid")  # the loss kinds that work across tokenizers
CROSS_COMBINE = ("sum", "route")  # teacher.combine modes that keep each teacher's signal in its own form


def feature_terms(cfg) -> list[tuple[int, str]]:
    """(index, kind) of each hidden-state or attention term of loss.terms."""
    return [(i, t["kind"]) for i, t in enumerate(cfg.loss.terms)
            if isinstance(t, dict) and t.get("kind") in FEATURE_WHAT]


def refuse_failed(checks: list[tuple[str, bool, str]]) -> None:
    """ConfigError `KEY WHY` for the first (key, ok, why) whose ok is false."""
    for key, ok, why in checks:
        if not ok:
            raise ConfigError(f"{key} {why}")


def check_agreement(cfg) -> None:
    r, s = cfg.rollout, cfg.student
    refuse_failed([("rollout.max_new_tokens", not r.on_policy or r.max_new_tokens < cfg.train.seq_len,
                    f"must be below train.seq_len={cfg.train.seq_len}: no prompt token would remain")])
    if cfg.train.freeze_embeddings and (s.init == "random" or s.tokenizer):
        raise ConfigError("train.freeze_embeddings=true keeps the embeddings the student starts with; with "
                          f"student.init={s.init}" + (f" and student.tokenizer={s.tokenizer}" if s.tokenizer else "")
                          + " some are not the teacher's: set train.freeze_embeddings=false")
    t = cfg.teacher
    if t.sources and t.combine == "route" and not cfg.data.path:
        raise ConfigError("teacher.combine=route needs data.path: records with a "
                          f"'{t.route_key}' field (teacher-written data has none)")


def cross_tokenizer_refusals(cfg) -> list[str]:
    """What a run with `student.tokenizer` cannot do, each with its fix; [] when it can."""
    why = []
    if cfg.teacher.cache:
        why.append(f"teacher.cache={cfg.teacher.cache} holds the teacher's signal for its own tokens only, not "
                   "what aligning another tokenizer needs; drop teacher.cache and use the live teacher "
                   "(teacher.model)")
    for i, entry in enumerate(cfg.teacher.sources):
        if isinstance(entry, dict) and entry.get("cache"):
            why.append(f"teacher.sources[{i}].cache={entry['cache']} holds a teacher's signal for its own tokens "
                       "only, not what aligning another tokenizer needs; give that teacher's model instead (model:)")
    if cfg.teacher.sources and cfg.teacher.combine not in CROSS_COMBINE:
        why.append(f"teacher.combine={cfg.teacher.combine} mixes the teachers' distributions token by token on one "
                   "vocabulary; across tokenizers use teacher.combine=sum (each teacher's loss, weighted) or route")
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


def _check_rollout_teacher(cfg) -> None:
    """On-policy text is new text: only a live teacher can score it."""
    r = cfg.rollout
    cached = next((e.get("cache") for e in cfg.teacher.sources if isinstance(e, dict) and e.get("cache")), None)
    if cfg.teacher.server and r.on_policy and (r.source == "teacher" or r.teacher_mix > 0):
        raise ConfigError(f"rollout.source={r.source} with rollout.teacher_mix={r.teacher_mix}: the teacher on "
                          f"{cfg.teacher.server} scores text but does not write rollouts in the run; use "
                          "rollout.source=student with rollout.teacher_mix=0 (the server scores the student's text)")
    if r.on_policy and (cfg.teacher.cache or cached):
        raise ConfigError(f"rollout.source={r.source} with rollout.lmbda={r.lmbda} trains on text written during "
                          f"the run, but teacher cache {cfg.teacher.cache or cached} holds the teacher's signal for "
                          "its own tokens only and cannot score new text; drop teacher.cache to use the live "
                          "teacher, or set rollout.source=data (or rollout.lmbda=0)")


def _check_feature_teacher(cfg, key: str, kind: str) -> None:
    """A hidden-state or attention term needs live teachers' activations (teacher.model, or the models and
    EMAs of teacher.sources; fsdp too) and a student with layers."""
    what = FEATURE_WHAT[kind]
    if cfg.teacher.cache:
        raise ConfigError(f"{key} ({kind}) compares the teacher's {what} with the student's, but "
                          f"teacher.cache={cfg.teacher.cache} holds only the teacher's output signal (top-k or "
                          "sampled tokens), no activations; drop teacher.cache so the teacher runs live, or remove "
                          "the term (a `kdistill cache` does not store activations)")
    if cfg.teacher.server:
        raise ConfigError(f"{key} ({kind}) compares the teacher's {what} with the student's, but the teacher on "
                          f"teacher.server={cfg.teacher.server} gives only its top-K log-probabilities; remove the "
                          "term, or drop teacher.server to run the teacher in the trainer")
    for i, entry in enumerate(cfg.teacher.sources):  # several teachers: each one's activations, weighted
        if isinstance(entry, dict) and entry.get("cache"):
            raise ConfigError(f"{key} ({kind}) compares every teacher's {what} with the student's, but "
                              f"teacher.sources[{i}] ({entry.get('name')}, cache {entry['cache']}) holds only its "
                              "output signal, no activations; give that entry its teacher's `model:` instead of "
                              "the cache, or remove the term")
    if cfg.teacher.sources and cfg.teacher.combine == "route":
        raise ConfigError(f"{key} ({kind}) compares every teacher's {what} on every example, but "
                          "teacher.combine=route scores each example by one teacher; use teacher.combine=sum, "
                          "or remove the term")
    if cfg.student.kind == "fractal":
        raise ConfigError(f"{key} ({kind}): the fractal student has one shared block, no layers to "
                          "pair with the teacher's; use student.kind=llama or remove the term")


def pack_refusals(cfg) -> list[str]:
    """Why this run cannot pack records several per row exactly (data.pack), each with its fix; [] when
    it can (the models are checked when they load: data/packing.py `why_not_packable`)."""
    t, why = cfg.teacher, []
    if t.cache or any(isinstance(e, dict) and e.get("cache") for e in t.sources):
        why.append(f"teacher cache {t.cache or 'in teacher.sources'} stores one signal per unpacked example; "
                   "drop it to use the live teacher")
    if t.server:
        why.append(f"teacher.server={t.server} scores one sequence per row; drop it to run the teacher here")
    if t.sources and t.combine == "route":
        why.append("teacher.combine=route scores each example by its own teacher; use combine=sum")
    if cfg.student.tokenizer:
        why.append(f"student.tokenizer={cfg.student.tokenizer} aligns each example with the teacher's tokens")
    if cfg.rollout.on_policy:
        why.append(f"rollout.source={cfg.rollout.source} writes text from each row's prompt; set rollout.lmbda=0")
    if cfg.student.kind == "fractal":
        why.append("student.kind=fractal reads a padding mask only; use student.kind=llama")
    for i, term in enumerate(cfg.loss.terms):
        if isinstance(term, dict) and term.get("kind") == "attention_map":
            why.append(f"loss.terms[{i}] (attention_map) compares whole attention maps; remove the term")
    return why


def reuse_refusals(cfg) -> list[str]:
    """Why this run cannot keep the teacher's signal per row (teacher.reuse_topk), each with its fix."""
    t, why = cfg.teacher, []
    for key, value in (("teacher.cache", t.cache), ("teacher.server", t.server), ("teacher.sources", t.sources),
                       ("student.tokenizer", cfg.student.tokenizer)):
        if value:
            why.append(f"it keeps one live teacher model's signal, and {key} is set; drop one of them")
    if cfg.rollout.on_policy:
        why.append(f"rollout.source={cfg.rollout.source} trains on new text every rollout step, which no kept "
                   "signal covers; set rollout.lmbda=0")
    for i, kind in feature_terms(cfg):
        why.append(f"loss.terms[{i}] ({kind}) needs the teacher's {FEATURE_WHAT[kind]} at every step; remove the term")
    return why


def check_supported(cfg) -> None:
    """ConfigError for the first combination of keys a distill run does not support."""
    if cfg.teacher.reuse_topk and (why := reuse_refusals(cfg)):
        raise ConfigError(f"teacher.reuse_topk={cfg.teacher.reuse_topk}: " + "; ".join(why))
    if cfg.student.tokenizer and (why := cross_tokenizer_refusals(cfg)):
        raise ConfigError(f"student.tokenizer={cfg.student.tokenizer}: " + "; ".join(why))
    if cfg.data.pack is True and (why := pack_refusals(cfg)):
        raise ConfigError("data.pack=true packs records several per row, which this run cannot do exactly: "
                          + "; ".join(why) + ". Or set data.pack=auto (packs where exact) or data.pack=false")
    _check_rollout_teacher(cfg)
    for i, kind in feature_terms(cfg):
        _check_feature_teacher(cfg, f"loss.terms[{i}]", kind)
