"""`kdistill distill`: config -> teacher -> data -> student -> training -> student folder + eval.json.

    from kdistill.config import load_config
    from kdistill.distill import distill
    distill(load_config("configs/demo.yaml", ["train.max_steps=20"]))
"""
from __future__ import annotations

import logging
import random
import shutil
import time
from pathlib import Path

import torch

from . import fsutil
from .config import Config, dump
from .cache import training as cache_training
from .data import batches as batching
from .data.files import read_records
from .data.generate import examples_from_generated, generate_records
from .data.render import render
from .errors import ConfigError, ModelError
from .evaluation.compare import compare, format_table
from .evaluation.heldout import heldout_metrics
from .hardware import pick_device, pick_dtype, set_threads
from .losses import build_objective
from .students import build_student, save_student
from .modeling import count_parameters
from .teacher import load_teacher, teacher_memory
from .train import checkpoint
from .train.loop import run_training, to_device

log = logging.getLogger("kdistill")
RUN_MARKERS = ("config.yaml", "metrics.jsonl", "checkpoints", "student", "adapter", "eval.json")


def prepare_output(output_dir: Path, resume: bool, overwrite: bool) -> Path | None:
    """Refuse a folder that holds another run unless resuming or overwriting; returns the checkpoint."""
    if resume:
        found = checkpoint.list_checkpoints(output_dir)
        if not found:
            raise ConfigError(f"--resume: {output_dir} has no complete checkpoint under checkpoints/; "
                              "start without --resume")
        return found[-1]
    if output_dir.exists() and any(output_dir.iterdir()):
        if not overwrite:
            held = [m for m in RUN_MARKERS if (output_dir / m).exists()] or sorted(p.name for p in output_dir.iterdir())[:5]
            raise ConfigError(f"output_dir {output_dir} already holds a run ({', '.join(held)}). Use --resume to "
                              "continue it, --overwrite to replace it, or set output_dir=NEW_FOLDER")
        for name in RUN_MARKERS:
            target = output_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    return None


def check_positions(cfg: Config, teacher) -> None:
    limit = getattr(teacher.config, "max_position_embeddings", None)
    if limit is not None and cfg.train.seq_len > limit:
        raise ConfigError(f"train.seq_len={cfg.train.seq_len} is longer than the teacher's "
                          f"max_position_embeddings={limit}; lower train.seq_len")


def load_examples(cfg: Config, teacher, tokenizer, teacher_id: str, device) -> list[dict]:
    if not cfg.data.path:
        records = generate_records(teacher, tokenizer, teacher_id, cfg.data.generate, device)
        return examples_from_generated(records, cfg.train.seq_len)
    records = read_records(cfg.data.path, cfg.data.split, cfg.data.max_records)
    return render(records, tokenizer, cfg.train.seq_len, cfg.data.format, cfg.data.text_field, cfg.data.path)


def trim_metrics(path: Path, step: int) -> None:
    """After a resume from `step`, drop rows written after that checkpoint (they will be redone)."""
    if path.is_file():
        import json

        rows = [line for line in path.read_text().splitlines() if line.strip()]
        keep = [r for r in rows if json.loads(r).get("step", 0) <= step]
        fsutil.write_text(path, "".join(r + "\n" for r in keep))


def distill(cfg: Config, resume: bool = False, overwrite: bool = False) -> dict:
    output_dir = Path(cfg.output_dir)
    resume_from = prepare_output(output_dir, resume, overwrite)
    fsutil.write_text(output_dir / "config.yaml", dump(cfg))
    threads = set_threads(cfg.train.threads)
    random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    device = pick_device(cfg.train.device)
    dtype = pick_dtype(cfg.teacher.dtype, device)
    log.info("device %s, teacher dtype %s, %d threads", device, dtype, threads)

    t0 = time.time()
    cached = cache_training.open_for_training(cfg) if cfg.teacher.cache else None  # checked before any model
    log.info("loading teacher %s%s", cfg.teacher.model, " (to initialise the student only)" if cached else "")
    if cached is None:
        teacher, tokenizer, teacher_dir = load_teacher(cfg.teacher.model, device, dtype,
                                                       cfg.teacher.trust_remote_code, cfg.teacher.load_in)
    else:
        teacher, tokenizer, teacher_dir = cache_training.init_teacher(cached, cfg, device, dtype)
    log.info("teacher loaded in %.1fs: %s parameters", time.time() - t0, f"{count_parameters(teacher):,}")
    memory = teacher_memory(teacher, dtype)
    if cfg.teacher.load_in != "full":
        print(f"teacher held in {cfg.teacher.load_in}: {memory['held_mb']:.1f} MB of weights instead of "
              f"{memory['full_mb']:.1f} MB ({memory['saved_mb']:.1f} MB saved)", flush=True)
    check_positions(cfg, teacher)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token

    examples = cached.examples if cached else load_examples(cfg, teacher, tokenizer, teacher_dir, device)
    train, held = batching.split(examples, cfg.data.heldout_fraction, cfg.train.seed)
    log.info("data: %d training and %d held-out examples of up to %d tokens", len(train), len(held),
             cfg.train.seq_len)
    pad = tokenizer.pad_token_id
    heldout = (cache_training.heldout_batches if cached else batching.heldout_batches)(
        held, cfg.train.batch_size, pad, cfg.eval.max_batches)
    calib = to_device(batching.collate(train[:4], pad), device)  # teacher passes that choose/prune layers

    torch.manual_seed(cfg.train.seed)
    student, report = build_student(cfg, teacher, teacher.get_input_embeddings().weight.shape[0], calib, tokenizer)
    student.to(device)
    if cfg.train.gradient_checkpointing:
        student.gradient_checkpointing_enable()
    print(f"student: {report['parameters']:,} parameters "
          f"(teacher {count_parameters(teacher):,}, {count_parameters(teacher) / report['parameters']:.2f}x smaller)"
          f" — {report}", flush=True)
    objective = build_objective(cfg.loss.terms, t2_scale=cfg.loss.t2_scale, chunk_size=cfg.loss.chunk_size,
                                memory_budget_mb=cfg.loss.memory_budget_mb, key="loss")

    if cached is not None:
        teacher = None  # the teacher only initialised the student: freed, and never in the training loop
    teacher_cache: list = []

    def evaluate(step: int) -> dict:
        student.eval()
        m = cache_training.heldout_metrics(student, heldout, device) if cached else \
            heldout_metrics(student, teacher, heldout, device, teacher_cache)
        return {"eval_kl": m["kl"], "eval_js": m["js"], "eval_top1": m["top1_agreement"],
                "eval_top10": m["top10_agreement"], "eval_ppl": m["ppl_student"]}

    start = evaluate(0)
    log.info("held-out KL before training: %.3f nats/token", start["eval_kl"])
    if resume_from is not None:
        trim_metrics(output_dir / "metrics.jsonl", int(resume_from.name.split("-")[1]))
    else:
        fsutil.append_jsonl(output_dir / "metrics.jsonl", {"step": 0, "loss": None, **start, "time": time.time()})

    stream = batching.BatchStream(train, cfg.train.batch_size, cfg.train.seed, pad,
                                  collate_fn=cached.collate_fn(pad) if cached else None)
    run_training(cfg, student, teacher, tokenizer, objective, stream, evaluate, device, output_dir, resume_from)

    student_dir = output_dir / "student"
    student = save_student(student, tokenizer, output_dir)  # a LoRA student: also adapter/, then merged
    log.info("student saved to %s; evaluating against the teacher", student_dir)
    if cached is None:
        result = compare(student, teacher, tokenizer, heldout, device, student_dir, teacher_dir,
                         cfg.eval.prompts, cfg.eval.max_new_tokens, measure_speed=cfg.eval.measure_speed,
                         tasks=cfg.eval.tasks or None)
    else:
        result = cache_training.final_comparison(cached, cfg, student, tokenizer, heldout, device, dtype, student_dir)
    result["heldout_start"] = {"kl": start["eval_kl"], "top1_agreement": start["eval_top1"]}
    result["student_init"] = report
    result["teacher_memory"] = {"load_in": cfg.teacher.load_in, **memory}
    fsutil.write_json(output_dir / "eval.json", result)
    print(cache_training.format_result(result) if cached else format_table(result), flush=True)
    return result
