"""`kdistill distill --dry-run`: resolve and check the config, print what the run would do, touch nothing.

    plan = describe(cfg, resume=False, overwrite=False)   # lines; print_plan prints them

Runs `preflight.check(cfg)` (every check that needs no model), then reads what it can without loading a
model: the teacher's kind and spec (and its config.json, for a local folder, to size the student), the
data, the loss terms, the token budget (the steps, or how train.epochs will count them once the data is
read) and what would happen to the output folder. No folder is created, no lock taken, no model loaded.
"""
from __future__ import annotations

import math
from pathlib import Path

from kdistill.base.errors import ConfigError
from kdistill.run import preflight
from kdistill.run.folder import RUN_FILES, check_flags, has_progress, is_run, not_a_run
from kdistill.train import budget, checkpoint


def teacher_line(cfg) -> str:
    t = cfg.teacher
    if t.sources:
        parts = [f"{e.get('name', '?')}: {e.get('model') or e.get('kind', 'model')}" for e in t.sources]
        return f"teacher: several ({t.combine}): " + "; ".join(parts)
    if t.cache:
        init = f", {t.model} loaded only to initialise the student" if cfg.student.init == "teacher" else ""
        return f"teacher: cache {t.cache} (stored signal){init}"
    from kdistill.models.teacher import resolve

    folder, gguf = resolve(t.model)
    where = (f".gguf file {Path(folder) / gguf}" if gguf else f"folder {folder}" if Path(folder).is_dir()
             else f"hub id {folder}")
    from kdistill.base.hardware import pick_device, pick_dtype

    device = pick_device(cfg.train.device)
    dtype = str(pick_dtype(t.dtype, device)).replace("torch.", "")
    reuse = (f"; each training row's top-{t.reuse_topk} kept at its first visit and reused (teacher.reuse_topk)"
             if t.reuse_topk else "")
    return f"teacher: model {t.model} ({where}), {dtype} on {device} (teacher.dtype={t.dtype}), held {t.load_in}{reuse}"


def _teacher_config(cfg):
    """The teacher's config when it is a local folder with config.json (no weights read), else None."""
    if cfg.teacher.sources or cfg.teacher.model.endswith(".gguf") or cfg.teacher.model == "default":
        return None
    folder = Path(cfg.teacher.model).expanduser()
    if not (folder / "config.json").is_file():
        return None
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder, trust_remote_code=False)


def student_line(cfg) -> str:
    s = cfg.student
    if s.kind == "pretrained":
        lora = f", LoRA rank {s.lora_rank} on {', '.join(s.lora_targets)}" if s.lora_rank else ", all weights"
        return f"student: pretrained {s.model}{lora}"
    if s.kind == "fractal":
        return (f"student: fractal, one block of width {s.hidden_size or 256} applied {s.fractal_steps} times "
                f"(alpha {s.fractal_alpha}), init {s.init}")
    config = _teacher_config(cfg)
    if config is not None:
        from kdistill.students.llama import resolve_sizes

        sizes = ", ".join(f"{k} {v}" for k, v in resolve_sizes(s, config).items())
    else:
        from kdistill.config.presets import PRESETS, SIZE_KEYS

        known = {**PRESETS[s.preset], **{k: getattr(s, k) for k in SIZE_KEYS if getattr(s, k) is not None}}
        if "layer_fraction" in known:
            fraction = known.pop("layer_fraction")
            known.setdefault("num_layers", f"{fraction:.0%} of the teacher's")
        sizes = ", ".join(f"{k} {v}" for k, v in known.items()) + "; the rest from the teacher when it loads"
    return f"student: LLaMA, preset {s.preset} ({sizes}), init {s.init}, layers by {s.layer_selection}"


def data_line(cfg) -> str:
    d = cfg.data
    if d.path:
        return f"data: {d.path} (format {d.format}, {d.heldout_fraction:.0%} held out)"
    g = d.generate
    return (f"data: teacher-generated, {g.num_samples} samples of up to {g.max_new_tokens} tokens "
            f"(seed {g.seed}; {d.heldout_fraction:.0%} held out; reused when already generated)")


def loss_line(cfg) -> str:
    terms = []
    for term in cfg.loss.terms:
        extra = ", ".join(f"{k} {v}" for k, v in term.items() if k not in ("kind", "weight"))
        terms.append(f"{term.get('weight', 1.0)} x {term.get('kind')}" + (f" ({extra})" if extra else ""))
    return "loss: " + " + ".join(terms) + (" (KD terms x T^2)" if cfg.loss.t2_scale else "")


def training_steps(t, n_train: int) -> int:
    """The optimizer steps of a run (`t`: the train section): train.max_steps when set, which overrides
    train.epochs as HF Trainer's max_steps overrides num_train_epochs; else
    ceil(epochs * n_train / (batch_size * grad_accum)) for its `n_train` training examples."""
    if t.max_steps is not None:
        return t.max_steps
    return max(1, math.ceil(t.epochs * n_train / (t.batch_size * t.grad_accum)))


def steps_note(t) -> str | None:
    """What the dry run and the run say when train.max_steps and train.epochs are both set; else None."""
    if t.max_steps is None or t.epochs is None:
        return None
    return (f"train.max_steps={t.max_steps} overrides train.epochs={t.epochs} (as max_steps overrides "
            "num_train_epochs in HF Trainer); leave train.max_steps empty (train.max_steps=) to train by epochs")


def epochs_line(t, n_train: int) -> str:
    """The run's count of its steps from train.epochs, once the training examples are counted."""
    per = t.batch_size * t.grad_accum
    return (f"train.epochs={t.epochs}: {training_steps(t, n_train)} steps = ceil({t.epochs} x {n_train} training "
            f"examples / {per} a step)")


def tokens_line(cfg) -> str:
    t = cfg.train
    accum = f" x {t.grad_accum} accumulated" if t.grad_accum > 1 else ""
    if t.time_budget is not None:
        cap = f"at most {t.max_steps} steps" if t.max_steps is not None else (
            f"at most {t.epochs} epoch{'s' if t.epochs > 1 else ''}" if t.epochs is not None else "")
        student = cfg.student
        steps = (f"training: a time budget of {t.time_budget:g} min from the command's start (teacher, data, "
                 f"start-up fits and steps; the final evaluation follows): the span fit may take "
                 f"{student.span_fit_share:.0%} and the repair {student.repair_share:.0%} of the time left when each "
                 f"starts, and the steps are as many as fit after {budget.TIMED_STEPS} timed ones"
                 + (f", {cap}" if cap else "") + f"; each step {t.batch_size} sequences{accum} x {t.seq_len} tokens")
    elif t.max_steps is None:  # counted from train.epochs once the data is read
        steps = (f"training: {t.epochs} epoch{'s' if t.epochs > 1 else ''} = ceil({t.epochs} x N / "
                 f"{t.batch_size * t.grad_accum}) steps for the N training examples (counted when the data is "
                 f"read; the run logs it), each step {t.batch_size} sequences{accum} x {t.seq_len} tokens")
    else:
        total = t.max_steps * t.batch_size * t.grad_accum * t.seq_len
        note = steps_note(t)
        steps = (f"training: {t.max_steps} steps x {t.batch_size} sequences{accum} x {t.seq_len} tokens = {total:,} "
                 "tokens" + (f" ({note})" if note else ""))
    best = "; the student is the checkpoint of the lowest held-out KL (train.keep_best)" if t.keep_best else ""
    return f"{steps}; lr {t.lr}, checkpoint every {t.checkpoint_every}, evaluate every {t.eval_every}{best}"


def output_line(cfg, resume: bool, overwrite: bool) -> str:
    """What the run would do with output_dir, refusing as `folder.run_folder` would (it decides alike)."""
    folder = Path(cfg.output_dir)
    check_flags(resume, overwrite)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"output_dir {folder} is a file; give a folder path (it is created if missing)")
    if not folder.exists():
        return f"output: {folder} (new folder)"
    run = is_run(folder)
    steps = [p.name for p in checkpoint.list_checkpoints(folder)] if run else []
    if resume and steps:
        return f"output: {folder} (resumed from {steps[-1]})"
    if not run:
        not_a_run(folder, overwrite)
        return f"output: {folder} ({'exists; ' if any(folder.iterdir()) else ''}the new run starts there)"
    present = [m for m in RUN_FILES if (folder / m).exists()]
    if resume and has_progress(folder):
        raise ConfigError(f"--resume: {folder} has no checkpoint; start without --resume and with --overwrite "
                          "to begin again")
    if resume or not has_progress(folder):
        return f"output: {folder} (a run with no checkpoint yet: the new run starts there, from step 0)"
    if not overwrite:
        raise ConfigError(f"output_dir {folder} already holds a run ({', '.join(present)}). Use --resume to "
                          "continue it, --overwrite to replace it, or set output_dir=NEW_FOLDER")
    return f"output: {folder} (replaced: the run there is moved aside until the new one's first checkpoint)"


def describe(cfg, resume: bool = False, overwrite: bool = False) -> list[str]:
    """The plan of a run, after every check that needs no model (raises KdistillError as the run would)."""
    preflight.check(cfg)
    return [teacher_line(cfg), student_line(cfg), data_line(cfg), loss_line(cfg), tokens_line(cfg),
            output_line(cfg, resume, overwrite)]


def print_plan(cfg, resume: bool = False, overwrite: bool = False) -> None:
    lines = describe(cfg, resume, overwrite)
    print("dry run: the config is valid; nothing was loaded or written", *(f"  {x}" for x in lines),
          "run it: the same command without --dry-run", sep="\n", flush=True)
