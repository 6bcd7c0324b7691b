"""`kdistill eval`: the teacher-vs-student table on screen, and JSON.

    kdistill eval --student runs/demo/student --teacher default --data notes.txt --out eval.json
    kdistill eval --run runs/demo --tasks tests/fixtures/tasks/tiny_mc.jsonl tests/fixtures/tasks/tiny_gen.jsonl

`--run RUN_DIR` evaluates the student of a `kdistill distill` run against its teacher on the run's own
held-out split (teacher, data and seq_len come from RUN_DIR/config.yaml) and merges the result into
RUN_DIR/eval.json, which `kdistill report` reads. `--lm-eval-dir DIR` also writes lm-eval task YAMLs
for the --tasks files and prints the `lm_eval` command that runs them on the student folder.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import fsutil
from ..config import Config, load_config
from ..data import batches as batching
from ..errors import ConfigError, ModelError
from ..hardware import pick_device, pick_dtype, set_threads
from ..model_files import check_model_folder
from ..teacher import load_teacher
from .compare import compare, format_table
from .exposure import exposure_metrics
from .lm_eval_tasks import lm_eval_command, write_task_yamls
from .tasks import read_task


def check_same_tokenizer(student_tok, teacher_tok, student_dir: str) -> None:
    probe = "Once upon a time, the king said: 42 × π ≈ 131.9 — ok?"
    if student_tok(probe)["input_ids"] != teacher_tok(probe)["input_ids"]:
        raise ModelError(f"{student_dir}: the student's tokenizer differs from the teacher's; distillation "
                         "and this comparison need one vocabulary (train the student with the teacher's tokenizer)")


def resolve_args(args) -> tuple[Config, str, str, bool]:
    """(config, student folder, teacher spec, split held-out) from --run or --student/--teacher."""
    if args.run:
        run = Path(args.run)
        if not (run / "config.yaml").is_file():
            raise ConfigError(f"--run {run}: no config.yaml there; give the output_dir of `kdistill distill`")
        cfg = load_config(run / "config.yaml")
        student = args.student or str(run / "student")
        return cfg, student, args.teacher or cfg.teacher.model, True
    if not args.student or not args.teacher:
        raise ConfigError("give --run RUN_DIR, or both --student DIR and --teacher SPEC")
    cfg = Config()
    cfg.data.path, cfg.train.seq_len = args.data, args.seq_len
    return cfg, args.student, args.teacher, not args.data


def output_path(args) -> Path | None:
    if args.out:
        return Path(args.out)
    return Path(args.run) / "eval.json" if args.run else None


def write_result(path: Path, result: dict) -> None:
    """Write the result; keys of an existing file that this run did not produce (heldout_start) are kept."""
    old = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = {}
    fsutil.write_json(path, {**old, **result})


def run_eval(args) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..data.load import load_examples
    from ..sources.model import ModelSource

    cfg, student_dir, teacher_spec, split = resolve_args(args)
    tasks = list(getattr(args, "tasks", None) or [])
    for path in tasks:
        read_task(path)  # bad task files fail before any model is loaded
    set_threads(0)
    device = pick_device("auto")
    if not Path(student_dir).is_dir():
        raise ModelError(f"--student {student_dir}: no such folder")
    use_safetensors = check_model_folder(student_dir, "--student")
    t = cfg.teacher
    teacher, tokenizer, teacher_dir = load_teacher(teacher_spec, device, pick_dtype("auto", device),
                                                   t.trust_remote_code, max_memory=t.max_memory,
                                                   offload_dir=t.offload_dir, allow_pickle=t.allow_pickle)
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32, trust_remote_code=False,
                                                   use_safetensors=use_safetensors).to(device).eval()
    check_same_tokenizer(AutoTokenizer.from_pretrained(student_dir, trust_remote_code=False), tokenizer,
                         student_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    examples = load_examples(cfg, teacher, tokenizer, teacher_dir, device)
    if split:
        _, examples = batching.split(examples, cfg.data.heldout_fraction, cfg.train.seed)
    batches = batching.heldout_batches(examples, cfg.train.batch_size, tokenizer.pad_token_id, args.batches)
    max_new = getattr(args, "max_new_tokens", None) or cfg.eval.max_new_tokens
    reference = ModelSource(teacher, tokenizer, teacher_dir, teacher_spec)
    result = compare(student, reference, batches, device, student_dir, cfg.eval.prompts, max_new,
                     measure_speed=not getattr(args, "no_speed", False), tasks=tasks,
                     task_limit=getattr(args, "limit", None))
    result["exposure"] = exposure_metrics(student, teacher, batches, tokenizer, device, max_new,
                                          cfg.rollout.prompt_tokens, cfg.train.seq_len, cfg.train.seed)
    print(format_table(result))
    out = output_path(args)
    if out is not None:
        write_result(out, result)
        print(f"\nwrote {out}")
    if getattr(args, "lm_eval_dir", None) and tasks:
        names = write_task_yamls(tasks, args.lm_eval_dir, max_new)
        print(f"lm-eval tasks in {args.lm_eval_dir}; run them with:\n  "
              f"{lm_eval_command(student_dir, args.lm_eval_dir, names)}")
    return 0
