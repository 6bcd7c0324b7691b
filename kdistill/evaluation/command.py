"""`kdistill eval --student DIR --teacher SPEC [--data SPEC]`: the comparison table, and JSON with --out."""
from __future__ import annotations

from pathlib import Path

import torch

from .. import fsutil
from ..config import Config
from ..data import batches as batching
from ..errors import ModelError
from ..hardware import pick_device, pick_dtype, set_threads
from ..teacher import load_teacher
from .compare import compare, format_table


def check_same_tokenizer(student_tok, teacher_tok, student_dir: str) -> None:
    probe = "Once upon a time, the king said: 42 × π ≈ 131.9 — ok?"
    if student_tok(probe)["input_ids"] != teacher_tok(probe)["input_ids"]:
        raise ModelError(f"{student_dir}: the student's tokenizer differs from the teacher's; distillation "
                         "and this comparison need one vocabulary (train the student with the teacher's tokenizer)")


def run_eval(args) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..distill import load_examples

    set_threads(0)
    device = pick_device("auto")
    teacher, tokenizer, teacher_dir = load_teacher(args.teacher, device, pick_dtype("auto", device))
    if not Path(args.student).is_dir():
        raise ModelError(f"--student {args.student}: no such folder")
    student = AutoModelForCausalLM.from_pretrained(args.student, dtype=torch.float32).to(device).eval()
    check_same_tokenizer(AutoTokenizer.from_pretrained(args.student), tokenizer, args.student)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    cfg = Config()
    cfg.data.path, cfg.train.seq_len = args.data, args.seq_len
    examples = load_examples(cfg, teacher, tokenizer, teacher_dir, device)
    if not args.data:
        _, examples = batching.split(examples, cfg.data.heldout_fraction, cfg.train.seed)
    batches = batching.heldout_batches(examples, cfg.train.batch_size, tokenizer.pad_token_id, args.batches)
    result = compare(student, teacher, tokenizer, batches, device, args.student, teacher_dir,
                     cfg.eval.prompts, cfg.eval.max_new_tokens)
    print(format_table(result))
    if args.out:
        fsutil.write_json(args.out, result)
    return 0
