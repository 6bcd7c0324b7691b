"""`kdistill distill`: config -> teacher source -> data -> student -> training -> student folder + eval.json.

    from kdistill.config.schema import load_config
    from kdistill.run.distill import distill
    distill(load_config("configs/demo.yaml", ["train.max_steps=20"]))

Each stage below is one function; what kind of teacher the run has is decided once, by
`sources.open_source`, and no stage asks it again.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from kdistill.base import fsutil
from kdistill.base.console import describe_student, outputs_line, run_log
from kdistill.base.errors import ConfigError
from kdistill.base.hardware import pick_device, pick_dtype, release_memory, set_threads
from kdistill.base.outputs import check_run_dir
from kdistill.config.paths import input_paths
from kdistill.config.schema import Config, to_dict
from kdistill.data import batches as batching
from kdistill.data import packing, rollout
from kdistill.evaluation.compare import format_table, measure_against, measure_speeds
from kdistill.evaluation.heldout import HeldoutEvaluator, eval_row, heldout_key
from kdistill.evaluation.record import distill_record
from kdistill.losses import build_objective
from kdistill.models.heads import count_parameters, head_weight
from kdistill.models.teacher import teacher_memory
from kdistill.report.model_card import write_student_card
from kdistill.report.runs import read_metrics
from kdistill.run import preflight
from kdistill.run.folder import check_flags, run_folder
from kdistill.run.phases import Phases
from kdistill.run.plan import epochs_line, steps_note, training_steps
from kdistill.sources import open_source
from kdistill.students import build_student, save_student
from kdistill.train import checkpoint, distributed
from kdistill.train.budget import Budget
from kdistill.train.loop import Parts, run_training

log = logging.getLogger("kdistill")


@dataclass
class Data:
    train: list[dict]
    heldout: list[dict]  # collated held-out batches, with whatever the source needs
    pad_id: int
    unpacked: list[dict] | None = None  # the training examples when `train` is packed rows (data.pack)


def setup(cfg: Config, dist=None) -> tuple[torch.device, torch.dtype]:
    threads = set_threads(cfg.train.threads)
    random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    device = distributed.device_for(dist.world if dist else 1, pick_device(cfg.train.device))
    dtype = pick_dtype(cfg.teacher.dtype, device)
    log.info("device %s, teacher dtype %s, %d thread%s", device, dtype, threads, "" if threads == 1 else "s")
    return device, dtype


def open_teacher(cfg: Config, device, dtype):
    t0 = time.time()
    source = open_source(cfg, device, dtype)
    model = source.init_model
    if model is not None:
        log.info("teacher ready in %.1fs: %s parameters", time.time() - t0, f"{count_parameters(model):,}")
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit is not None and cfg.train.seq_len > limit:
            raise ConfigError(f"train.seq_len={cfg.train.seq_len} is longer than the teacher's "
                              f"max_position_embeddings={limit}; lower train.seq_len")
    if cfg.teacher.load_in != "full" and model is not None:
        m = teacher_memory(model, dtype)
        print(f"teacher held in {cfg.teacher.load_in}: {m['held_mb']:.1f} MB of weights instead of "
              f"{m['full_mb']:.1f} MB ({m['saved_mb']:.1f} MB saved)", flush=True)
    return source


def check_same_teacher(run, source) -> None:
    """A resumed run must talk to the teacher it was trained with (same weights, same cache)."""
    if run.resume_from is None:
        return
    saved = checkpoint.read_state(run.resume_from).get("teacher")
    now = source.identity()
    if saved is not None and saved != now:
        diff = [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(saved) | set(now))
                if saved.get(k) != now.get(k)]
        raise ConfigError(f"--resume: the teacher differs from the one {run.resume_from} was trained with "
                          f"({'; '.join(diff)}); resume with that teacher or start a new run")


def load_data(cfg: Config, source, device, dist=None) -> Data:
    examples = source.load_examples(cfg, device)
    train, held = batching.split(examples, cfg.data.heldout_fraction, cfg.train.seed)
    report = getattr(examples, "report", None) or {}
    rows, packed = packing.for_run(cfg, train, report.get("format", "generated"), source)  # after the split
    if report and (dist is None or dist.main):  # teacher-written data: kept/dropped
        fsutil.write_json(Path(cfg.output_dir) / "data_report.json",
                          {**report, "heldout_split": batching.split_report(train, held), "packing": packed})
    log.info("data: %d training and %d held-out examples of up to %d tokens", len(train), len(held),
             cfg.train.seq_len)
    pad = source.tokenizer.pad_token_id
    heldout = [source.collate(held[i:i + cfg.train.batch_size], pad)
               for i in range(0, len(held), cfg.train.batch_size)][:cfg.eval.max_batches]
    return Data(rows, heldout, pad, train if packed["packed"] else None)


CALIBRATION_ROWS = 16


def make_student(cfg: Config, source, data: Data, device, budget=None):
    teacher = source.init_model
    examples = data.unpacked or data.train  # one record per row, as init reads them
    rows = examples[:max(CALIBRATION_ROWS, cfg.student.repair_rows,  # layer choice (first 256 tokens),
                         cfg.student.span_fit_rows if cfg.student.span_fit_steps else 0)]
    # pruning (4 rows), repair (student.repair_rows), span fit (student.span_fit_rows)
    calib = batching.to_device(source.calibration_batch(rows, data.pad_id), device)  # as the teacher reads them
    torch.manual_seed(cfg.train.seed)
    student, report = build_student(cfg, teacher, source.vocab_size, calib, source.tokenizer, budget)
    student.to(device)
    if data.unpacked is not None:
        packing.check_student(student, cfg.train.seq_len)
    if cfg.train.freeze_embeddings:  # the tied output layer is the same tensor
        student.get_input_embeddings().weight.requires_grad_(False)
        if student.get_output_embeddings() is not None:
            student.get_output_embeddings().weight.requires_grad_(False)
        report["embeddings_frozen"] = True
    if cfg.train.gradient_checkpointing:  # transformers >= 5 renamed it; both exist on some versions
        getattr(student, "activation_checkpointing_enable", student.gradient_checkpointing_enable)()
    print(describe_student(report, count_parameters(teacher)), flush=True)
    return student, report


def feature_loss(objective, student, source, report: dict, data: Data, run, device):
    """Hidden-state and attention terms (None without any): pairs resolved now, or read back from the
    checkpoint a run resumes from, and kept in the record (`feature_pairs`) and the student's report."""
    if not objective.features:
        return None
    from kdistill.train.features import pairs_record, plan

    recorded = None
    if run.resume_from is not None:
        recorded = checkpoint.read_state(run.resume_from).get("feature_pairs")
    calib = batching.to_device(batching.collate((data.unpacked or data.train)[:4], data.pad_id), device)
    several = getattr(source, "feature_teachers", None)  # teacher.sources: each teacher's activations
    features = plan(objective, student, several() if several else source.init_model, report, calib,
                    recorded).to(device)
    report["feature_pairs"] = pairs_record(features)
    return features


def trim_metrics(path: Path, step: int) -> None:
    """After a resume from `step`, drop rows written after that checkpoint (they will be redone) and a last
    line a kill cut short (`run_folder` has said so and checked the other lines)."""
    if path.is_file():
        rows = read_metrics(path, say=lambda note: None)
        fsutil.write_text(path, "".join(json.dumps(r) + "\n" for r in rows if r.get("step", 0) <= step))


def finish(cfg: Config, run, student, source, evaluators, data: Data, device, dtype, start: dict,
           report) -> tuple[dict, dict]:
    """Save the student and compare it with the teacher (and every other reference): eval.json's numbers so
    far, and the model folders whose speed `publish` measures once the caller has let go of the models."""
    student_dir = run.path / "student"
    with fsutil.writing(student_dir):
        student = save_student(student, source.tokenizer, run.path)  # a LoRA student: also adapter/, then merged
    log.info("student saved to %s; evaluating against the teacher", student_dir)
    measured = {ev.against: ev(student.eval()) for ev in evaluators}
    reference = source.final_reference(cfg, device, dtype)
    if reference is not None:
        result, folders = measure_against(student, source, reference, data.heldout, device, student_dir, cfg,
                                          cfg.eval.max_new_tokens, tasks=cfg.eval.tasks or None,
                                          heldout=measured.get(reference.against), speed=cfg.eval.measure_speed)
        result["teacher_memory"] = {"load_in": cfg.teacher.load_in, **teacher_memory(reference.model, dtype)}
    else:
        result, folders = {"student": {"parameters": count_parameters(student)},
                           "teacher": {"parameters": source.identity().get("parameters")}}, {}
    for against, metrics in measured.items():
        result[heldout_key(against)] = metrics
    result.update(start)
    result["teacher_source"] = source.identity()
    result["student_init"] = report
    return result, folders


def publish(cfg: Config, run, result: dict, folders: dict, data: Data, device, dtype) -> dict:
    """Measure each saved model's speed in its own process (nothing else is held now), then write eval.json,
    print the table, write the model card and say what was written."""
    clock = Phases()
    with clock("speed"):
        measure_speeds(result, folders, cfg.eval.prompts, cfg.eval.max_new_tokens, device)
    result["phases"] = {**result.get("phases", {}), **clock.seconds}
    result = distill_record(result, cfg, run.path, device, dtype, len(data.train),
                            sum(len(b["input_ids"]) for b in data.heldout))  # when, how, data sizes, hardware
    with fsutil.writing(run.path / "eval.json"):
        fsutil.write_json(run.path / "eval.json", result)
    print(format_table(result), flush=True)
    write_student_card(cfg, run.path, result, dtype)
    print(outputs_line(run.path, (cfg.eval.prompts or ["Once upon a time"])[0]), flush=True)
    return result


def distill(cfg: Config, resume: bool = False, overwrite: bool = False, accept_changed_data: bool = False) -> dict:
    """Run a whole distillation; returns what it writes as eval.json. Raises KdistillError for bad input
    (before anything is touched when the config alone shows it). `accept_changed_data`: resume although
    the data files changed since the checkpoint (recorded in resumes.jsonl)."""
    budget = Budget(cfg.train.time_budget)  # train.time_budget counts from the command's start
    check_flags(resume, overwrite)
    check_run_dir(cfg.output_dir, input_paths(cfg))  # before any input is read: the output rule first
    preflight.check(cfg)
    device = pick_device(cfg.train.device)
    dist = distributed.setup(cfg, device)
    try:
        with (run_folder(cfg, resume, overwrite, accept_changed_data) if dist.main
              else contextlib.nullcontext()) as run, \
                (run_log(run.path / "kdistill.log", append=resume, keep=lambda: run.checkpointed) if dist.main
                 else contextlib.nullcontext()):
            run = follow_main(run, cfg, dist)
            return _distill(cfg, run, dist, budget)
    finally:
        distributed.teardown(dist)


def follow_main(run, cfg: Config, dist):
    """Every process learns the main process's run folder and resume point (only the main one writes)."""
    if not dist.active:
        return run
    from kdistill.run.folder import RunFolder

    distributed.check_visible(dist, run.path if dist.main else cfg.output_dir)
    resume_from = dist.broadcast(str(run.resume_from) if dist.main and run.resume_from else None)
    return run if dist.main else RunFolder(Path(cfg.output_dir), Path(resume_from) if resume_from else None,
                                           checkpointed=True)


def references(source, data: Data, device, vocab: int, dist) -> list:
    """Held-out evaluators, one per reference of the source (the main process evaluates), with every
    signal computed now: a teacher that only initialised the student is freed next."""
    evaluators = [HeldoutEvaluator(ref, data.heldout, device) for ref in source.references()] if dist.main else []
    for ev in evaluators:
        ev.freeze(vocab)
    source.release_init()
    return evaluators


def begin(run, evaluators, student) -> tuple[dict, dict | None]:
    """Held-out metrics before training: eval.json's *_start, and a fresh run's step-0 row, which the loop
    writes to metrics.jsonl and the trackers (None on a resume: the row is there already)."""
    first = {ev.against: ev(student.eval()) for ev in evaluators}
    start = {heldout_key(a) + "_start": {"kl": m["kl"], "top1_agreement": m["top1_agreement"]}
             for a, m in first.items()}
    for key, m in start.items():
        log.info("%s KL before training: %.3f nats/token", key.replace("_start", ""), m["kl"])
    if run.resume_from is not None:
        trim_metrics(run.path / "metrics.jsonl", int(run.resume_from.name.split("-")[1]))
        return start, None
    row = {k: v for a, m in first.items() for k, v in eval_row(m, a).items()}
    return start, {"step": 0, "loss": None, **row, "time": time.time()}


def with_steps(cfg: Config, n_train: int, main: bool) -> Config:
    """The config the run trains with: train.max_steps as set, or counted from train.epochs over the
    `n_train` training examples (said in the log, and train.keep_best checked against the count). The
    config itself keeps max_steps empty (config.yaml, checkpoints), so a resume counts again."""
    t = cfg.train
    if t.max_steps is not None or t.epochs is None:  # set, or left to train.time_budget
        return cfg
    steps = training_steps(t, n_train)
    t.check_evaluations(steps, f"the {steps} steps of train.epochs={t.epochs}")
    if main:
        log.info(epochs_line(t, n_train))
    return dataclasses.replace(cfg, train=dataclasses.replace(t, max_steps=steps))


def _distill(cfg: Config, run, dist, budget: Budget) -> dict:
    """The stages of `distill`, on every process of a run."""
    device, dtype = setup(cfg, dist)
    if steps_note(cfg.train) and dist.main:
        log.warning(steps_note(cfg.train))
    clock = Phases()  # eval.json's `phases`: where the user's wait went
    with dist.main_first():  # the main process fills the caches (GGUF conversion, generated data)
        with clock("teacher"):
            source = open_teacher(cfg, device, dtype)
        check_same_teacher(run, source)
        with clock("data"):
            data = load_data(cfg, source, device, dist)
    asked, cfg = cfg, with_steps(cfg, len(data.train), dist.main)  # `asked` is what checkpoints record
    with clock("student"):
        student, report = make_student(cfg, source, data, device, budget)
    source.attach_student(student)  # a source that is the student itself (EMA) starts from it here
    objective = build_objective(cfg.loss.terms, t2_scale=cfg.loss.t2_scale, chunk_size=cfg.loss.chunk_size,
                                memory_budget_mb=cfg.loss.memory_budget_mb, key="loss")
    features = feature_loss(objective, student, source, report, data, run, device)
    evaluators = references(source, data, device, head_weight(student).shape[0], dist)

    def evaluate(step: int, model) -> dict:
        model.eval()
        return {k: v for ev in evaluators for k, v in eval_row(ev(model), ev.against).items()}

    with clock("step 0 evaluation"):
        start, first = begin(run, evaluators, student) if dist.main else ({}, None)
    stream = batching.BatchStream(data.train, cfg.train.batch_size, cfg.train.seed, data.pad_id,
                                  collate_fn=lambda picked: source.collate(picked, data.pad_id))
    if source.prefetch:  # signals asked for ahead of the step (a teacher server), same batches and resume
        stream = batching.Lookahead(stream, source.prefetch)
    stream = rollout.build_stream(cfg, stream, student, source, device)  # itself when off-policy
    record = {"config": to_dict(asked), "teacher": source.identity(), "student_init": report,
              "data_files": run.data_files,  # what --resume compares (run/data_files.py)
              **({"feature_pairs": report["feature_pairs"]} if features is not None else {})}
    parts = Parts(student, source, objective, stream, evaluate, device, features, dist, record, start_row=first,
                  budget=budget, eval_s=clock.seconds.get("step 0 evaluation", 0.0))
    with clock("training"):
        state = run_training(cfg.train, parts, run)
    trained, cfg = state.student, trained_steps(cfg, state.total)
    del state
    del parts  # it holds the models, which are freed below
    release_memory(trained)  # optimizer state and gradients: not held through evaluation
    if not dist.main:
        return {}
    with clock("evaluation"):
        result, folders = finish(cfg, run, trained, source, evaluators, data, device, dtype, start, report)
    result["phases"] = clock.seconds
    del trained, student, source, evaluators, evaluate, stream, features, objective  # the models: freed before
    release_memory()  # the speed subprocesses start, whose memory would otherwise add to theirs
    return publish(cfg, run, result, folders, data, device, dtype)


def trained_steps(cfg: Config, steps: int) -> Config:
    """The config the evaluation and the model card describe: the steps the run trained (a time budget
    decides them while training)."""
    if cfg.train.max_steps == steps:
        return cfg
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=steps))
