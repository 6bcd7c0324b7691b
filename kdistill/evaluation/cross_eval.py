"""`kdistill eval --run RUN` for a run whose student has its own tokenizer (`student.tokenizer`).

The teacher is read through its own tokenizer by the run's cross-tokenizer source, on RUN's held-out
split (its data.path, split with data.heldout_fraction and train.seed as `distill` split it) or on the
whole of `--data FILE`; held-out metrics are per aligned group and per byte (`cross_metrics.py`), and
each model's completions use its own tokenizer. Benchmark tasks and exposure metrics, which score one
model's tokens with the other, are not run for such a pair.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from kdistill.base.errors import ModelError
from kdistill.base.hardware import pick_device, pick_dtype, release_memory, set_threads
from kdistill.data import batches as batching
from kdistill.evaluation import record
from kdistill.evaluation.compare import compare, format_table, measure_speeds, speed_folders


def is_cross(cfg) -> bool:
    return bool(cfg.student.tokenizer)


def heldout_batches(args, cfg, source, device) -> list[dict]:
    """The run's held-out split (or all of --data), collated by the cross-tokenizer source."""
    cfg = copy.deepcopy(cfg)
    if getattr(args, "data", None):
        cfg.data.path = args.data
    examples = source.load_examples(cfg, device)
    if not getattr(args, "data", None):
        _, examples = batching.split(examples, cfg.data.heldout_fraction, cfg.train.seed)
    pad = source.tokenizer.pad_token_id
    size = cfg.train.batch_size
    return [source.collate(examples[i:i + size], pad) for i in range(0, len(examples), size)][:args.batches]


def run_cross_eval(args, cfg, student_dir: str, teacher_spec: str, command: str, out: Path | None,
                   write_result) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdistill.models.teacher import load_teacher
    from kdistill.sources.cross import CrossTokenizerSource
    from kdistill.sources.model import ModelSource

    if getattr(args, "tasks", None):
        raise ModelError("--tasks: benchmark tasks score both models with one tokenizer; this run's student has "
                         "its own (student.tokenizer). Evaluate tasks on the student alone")
    set_threads(0)
    device = pick_device("auto")
    dtype = pick_dtype("auto", device)
    t = cfg.teacher
    teacher, tokenizer, teacher_dir = load_teacher(teacher_spec, device, dtype, t.trust_remote_code,
                                                   max_memory=t.max_memory, offload_dir=t.offload_dir,
                                                   allow_pickle=t.allow_pickle)
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32).to(device).eval()
    source = CrossTokenizerSource(ModelSource(teacher, tokenizer, teacher_dir, teacher_spec),
                                  AutoTokenizer.from_pretrained(student_dir), cfg.student.tokenizer)
    batches = [] if getattr(args, "no_heldout", False) else heldout_batches(args, cfg, source, device)
    max_new = getattr(args, "max_new_tokens", None) or cfg.eval.max_new_tokens
    reference = source.final_reference(cfg, device, dtype)
    result = compare(student, reference, batches, device, student_dir, cfg.eval.prompts, max_new)
    folders = {} if getattr(args, "no_speed", False) else speed_folders(reference, student_dir)
    del teacher, student, source, reference, batches
    release_memory()  # each speed subprocess's memory would add to the models held here
    measure_speeds(result, folders, cfg.eval.prompts, max_new, device)
    result = record.stamp(result, record.how(command, student_dir, f"{teacher_spec} ({teacher_dir})", device, dtype))
    print(format_table(result))
    if out is not None:
        write_result(out, result)
        print(f"\nwrote {out}")
    return 0
