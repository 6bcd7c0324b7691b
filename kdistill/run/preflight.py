"""Check a whole run configuration before any folder is touched, any model loads or any data is made.

`check(cfg)` runs every check that needs no model: the loss terms, the task files, the student's
options, the data files (read whole, so an unreadable or malformed file fails now, not after the teacher
has loaded), the teacher's path and loading options, the cache's manifest, the device and dtype. Checks
that need a model (a preset against the teacher's width, vocabulary and positions) run when it loads.
"""
from __future__ import annotations

import difflib
from pathlib import Path

from kdistill.base.errors import ConfigError, KdistillError


def check_loss(cfg) -> None:
    from kdistill.losses import build_objective

    build_objective(cfg.loss.terms, t2_scale=cfg.loss.t2_scale, chunk_size=cfg.loss.chunk_size,
                    memory_budget_mb=cfg.loss.memory_budget_mb, key="loss")
    if cfg.loss.chunk_size is not None and cfg.loss.chunk_size < 1:
        raise ConfigError("loss.chunk_size must be at least 1 (or empty to choose it from loss.memory_budget_mb)")


def check_tasks(cfg) -> None:
    from kdistill.data.task_files import read_task

    for path in cfg.eval.tasks:
        read_task(path)


def check_student(cfg) -> None:
    from kdistill.students.presets import PRESETS

    s = cfg.student
    if s.kind == "llama" and s.preset not in PRESETS:
        near = difflib.get_close_matches(s.preset, PRESETS, n=1)
        hint = f"did you mean '{near[0]}'?" if near else f"choose one of {', '.join(PRESETS)}"
        raise ConfigError(f"student.preset: unknown preset '{s.preset}'; {hint}")
    for key in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "intermediate_size"):
        value = getattr(s, key)
        if value is not None and value < 1:
            raise ConfigError(f"student.{key}={value} must be at least 1 (or empty to take it from the preset)")
    if s.kind == "pretrained" and s.model != "teacher":
        from kdistill.students.pretrained import student_folder

        student_folder(s.model, None)
    if s.kind == "fractal" and s.fractal_steps < 1:
        raise ConfigError(f"student.fractal_steps={s.fractal_steps} must be at least 1")


def check_data(cfg) -> None:
    """A local data file (or folder) is read whole now; a hub dataset name is checked when it loads."""
    if not cfg.data.path:
        return
    path = Path(cfg.data.path).expanduser()
    if path.exists() or cfg.data.path.startswith((".", "/", "~")):
        from kdistill.data.files import read_records
        from kdistill.data.render import check_fields

        records = read_records(cfg.data.path, cfg.data.split, cfg.data.max_records)
        check_fields(records, cfg.data.format, cfg.data.text_field, cfg.data.path)


def check_teacher(cfg) -> None:
    from kdistill.base.hardware import pick_device, pick_dtype

    device = pick_device(cfg.train.device)
    pick_dtype(cfg.teacher.dtype, device)
    if cfg.teacher.cache:
        from kdistill.cache import manifest as M

        M.check_complete(Path(cfg.teacher.cache), M.read_manifest(Path(cfg.teacher.cache)))
        if cfg.student.init != "teacher":
            return  # the teacher is not needed at all
    if any(e.get("kind", "model") == "model" for e in cfg.teacher.sources):
        return  # the teachers are in teacher.sources (checked by check_sources)
    from kdistill.models.teacher import resolve

    try:
        resolve(cfg.teacher.model)
    except KdistillError as e:
        if not cfg.teacher.cache:
            raise
        raise type(e)(f"{e} (with teacher.cache, teacher.model is loaded only to initialise the student; "
                      "set student.init=random to train without it)") from None
    if cfg.teacher.max_memory and not cfg.teacher.offload_dir:
        raise ConfigError("teacher.max_memory needs teacher.offload_dir: a folder for the layers that do not fit")


def check_sources(cfg) -> None:
    if not cfg.teacher.sources:
        return
    from kdistill.cache import manifest as M
    from kdistill.models.teacher import resolve
    from kdistill.sources.multi import parse_sources

    for i, entry in enumerate(parse_sources(cfg)):
        try:
            if entry["kind"] == "model":
                resolve(entry["model"])
            elif entry["kind"] == "cache":
                M.check_complete(Path(entry["cache"]), M.read_manifest(Path(entry["cache"])))
        except KdistillError as e:
            raise type(e)(f"teacher.sources[{i}] ({entry['name']}): {e}") from None


def check_rollout(cfg) -> None:
    """On-policy text is new text: only a live teacher can score it."""
    r = cfg.rollout
    cached = next((e.get("cache") for e in cfg.teacher.sources if isinstance(e, dict) and e.get("cache")), None)
    if r.on_policy and (cfg.teacher.cache or cached):
        raise ConfigError(f"rollout.source={r.source} with rollout.lmbda={r.lmbda} trains on text written during "
                          f"the run, but teacher cache {cfg.teacher.cache or cached} holds the teacher's signal for its own "
                          "tokens only and cannot score new text; drop teacher.cache to use the live teacher, or "
                          "set rollout.source=data (or rollout.lmbda=0)")


def check_generate(cfg) -> None:
    """The prompts, seed-task, problem and contamination files of teacher-generated data, read whole now."""
    if cfg.data.path:
        return
    from kdistill.data.generation_inputs import check_generate_files

    check_generate_files(cfg)


def check_features(cfg) -> None:
    """Hidden-state and attention terms: a teacher with activations, layers that exist (train/feature_checks)."""
    from kdistill.train.feature_checks import check

    check(cfg)


def check_cross_tokenizer(cfg) -> None:
    """student.tokenizer: what a cross-tokenizer run cannot do, and the data read by both tokenizers."""
    from kdistill.sources.cross_checks import check_cross

    check_cross(cfg)


def check_trackers(cfg) -> None:
    from kdistill.train import distributed
    from kdistill.train.tracking import check

    check(cfg.train.tracker)
    distributed.check(cfg)


CHECKS = (check_trackers, check_cross_tokenizer, check_sources, check_rollout, check_loss, check_features, check_tasks, check_student,
          check_teacher, check_data, check_generate)


def check(cfg) -> None:
    """Every check that needs no model; raises the first KdistillError found."""
    for run in CHECKS:
        run(cfg)
