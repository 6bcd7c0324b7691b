"""Check a whole run configuration before any folder is touched, any model loads or any data is made.

`check(cfg)` first runs the config's own checks (kdistill/config: every section's keys, the keys that must
agree, the combinations a run does not support), then the checks that read files or this machine: the
trackers' packages and the launch, a student's own tokenizer against the data, every teacher's path and
cache manifest, the feature terms' layers, the task files, a pretrained student's folder, the device and
dtype, the data files (read whole, so an unreadable or malformed file fails now, not after the teacher
has loaded) and teacher-generated data's input files. Checks that need a model (a preset against the
teacher's width, vocabulary and positions) run when it loads.
"""
from __future__ import annotations

from pathlib import Path

from kdistill.base.errors import KdistillError
from kdistill.config.checks import check_supported
from kdistill.config.schema import validate
from kdistill.config.sources import source_entries


def check_environment(cfg) -> None:
    """The trackers' packages are installed; the launch fits train.distributed and the batch."""
    from kdistill.train import distributed
    from kdistill.train.tracking import check

    check(cfg.train.tracker)
    distributed.check(cfg)


def check_cross_tokenizer(cfg) -> None:
    """student.tokenizer: it loads, and the data is read by both tokenizers (sources/cross_checks)."""
    from kdistill.sources.cross_checks import check_cross

    check_cross(cfg)


def check_sources(cfg) -> None:
    """Each entry of teacher.sources names a teacher that exists, or a complete cache."""
    from kdistill.cache import manifest as M
    from kdistill.models.teacher import resolve

    for i, entry in enumerate(source_entries(cfg.teacher)):
        try:
            if entry["kind"] == "model":
                resolve(entry["model"])
            elif entry["kind"] == "cache":
                M.check_complete(Path(entry["cache"]), M.read_manifest(Path(entry["cache"])))
        except KdistillError as e:
            raise type(e)(f"teacher.sources[{i}] ({entry['name']}): {e}") from None


def check_features(cfg) -> None:
    """Hidden-state and attention terms: layers that exist, from the teacher's config.json (train/feature_checks)."""
    from kdistill.train.feature_checks import check

    check(cfg)


def check_tasks(cfg) -> None:
    from kdistill.data.task_files import read_task

    for path in cfg.eval.tasks:
        read_task(path)


def check_student(cfg) -> None:
    """A pretrained student's folder (or hub id) exists."""
    s = cfg.student
    if s.kind == "pretrained" and s.model != "teacher":
        from kdistill.students.pretrained import student_folder

        student_folder(s.model, None)


def check_teacher(cfg) -> None:
    from kdistill.base.hardware import pick_device, pick_dtype, pick_precision

    device = pick_device(cfg.train.device)
    pick_dtype(cfg.teacher.dtype, device)
    pick_precision(cfg.train.precision, device)  # bf16 on a GPU without it
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


def check_generate(cfg) -> None:
    """The prompts, seed-task, problem and contamination files of teacher-generated data, read whole now."""
    if cfg.data.path:
        return
    from kdistill.data.generation_inputs import check_generate_files

    check_generate_files(cfg)


FILE_CHECKS = (check_environment, check_cross_tokenizer, check_sources, check_features, check_tasks, check_student,
               check_teacher, check_data, check_generate)


def check(cfg) -> None:
    """Every check that needs no model; raises the first KdistillError found."""
    validate(cfg)
    check_supported(cfg)
    for run in FILE_CHECKS:
        run(cfg)

