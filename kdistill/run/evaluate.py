"""Evaluate a student against its teacher (`kdistill eval`): the table on screen, and JSON.

    kdistill eval --student runs/demo/student --teacher default --data notes.txt --out eval.json
    kdistill eval --run runs/demo --tasks tests/fixtures/tasks/tiny_mc.jsonl tests/fixtures/tasks/tiny_gen.jsonl
    kdistill eval --run runs/demo --no-heldout --no-speed --tasks navigate/task.json

`--run RUN_DIR` evaluates the student of a `kdistill distill` run against its teacher on the run's own
held-out split (teacher, data and seq_len come from RUN_DIR/config.yaml; `--data FILE` measures on a file
instead) and merges the result into RUN_DIR/eval.json, which `kdistill report` reads: each measurement
keeps when and how it was taken, and one this command did not repeat (`--no-speed`, `--no-heldout`) stays
(record.py). Without --run or --data the teacher writes new held-out samples with a seed of their own
(eval_data.py). `--no-heldout` reads and generates no held-out text: tasks, sizes and speed only.
`--lm-eval-dir DIR` also writes lm-eval task YAMLs for the --tasks files and prints the complete `lm_eval`
commands that run them on the student and on the teacher's folder.

The teacher is opened by `sources.open_source`, as `distill` opens it, from the run's config (or a fresh
one for --student/--teacher): held-out text is read and collated by that source, so a run whose student
has its own tokenizer (`student.tokenizer`) is measured per aligned group and per byte
(evaluation/cross_metrics.py), each model completing prompts with its own tokenizer; benchmark tasks,
which score one model's tokens with the other, are refused for it, and exposure metrics are not measured.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import shlex
from pathlib import Path

import torch

from kdistill.base import fsutil
from kdistill.base.errors import ConfigError, ModelError
from kdistill.base.hardware import pick_device, pick_dtype, release_memory, set_threads
from kdistill.base.outputs import check_output
from kdistill.config.legacy import load_run_config
from kdistill.config.schema import Config
from kdistill.data import batches as batching
from kdistill.data.task_files import read_task
from kdistill.evaluation import eval_data, record
from kdistill.evaluation.compare import format_table, measure_against, measure_speeds
from kdistill.evaluation.heldout import heldout_key, heldout_metrics
from kdistill.evaluation.lm_eval_tasks import lm_eval_command, write_task_yamls
from kdistill.models.files import check_model_folder
from kdistill.models.heads import count_parameters
from kdistill.sources import open_source


@dataclasses.dataclass
class EvalSettings:
    """What one evaluation measures (the options of `kdistill eval`, kdistill/commands/args.py)."""
    run: str | None = None             # a `kdistill distill` output_dir: its student, teacher and held-out split
    student: str | None = None         # student folder (default with run: RUN/student)
    teacher: str | None = None         # hub id, folder, .gguf file or 'default' (default with run: the run's)
    data: str | None = None            # held-out text file (default: the run's split, else teacher-written)
    seq_len: int = 128
    batches: int = 8
    tasks: list[str] | None = None     # benchmark files: JSONL, BIG-bench task.json, lm-eval YAML
    limit: int | None = None           # the first N records of each task
    max_new_tokens: int | None = None
    no_speed: bool = False
    no_heldout: bool = False
    lm_eval_dir: str | None = None     # also write lm-eval task YAMLs there and print the lm_eval commands
    out: str | None = None             # merge the result into this JSON file (with run: RUN/eval.json)
    teacher_server: str | None = None  # the teacher on a vLLM/SGLang server (default with run: the run's)
    server_model: str | None = None    # the name it serves (default: the run's, else its only model)
    server_api: str | None = None      # vllm or sglang (default: the run's, else vllm)
    force: bool = False                # replace an --out that holds no eval result, an --lm-eval-dir of other files


def check_same_tokenizer(student_tok, teacher_tok, student_dir: str) -> None:
    probe = "Once upon a time, the king said: 42 × π ≈ 131.9 — ok?"
    if student_tok(probe)["input_ids"] != teacher_tok(probe)["input_ids"]:
        raise ModelError(f"{student_dir}: the student's tokenizer differs from the teacher's; distillation "
                         "and this comparison need one vocabulary (train the student with the teacher's tokenizer; a "
                         "student.tokenizer run is evaluated per byte with `kdistill eval --run RUN_DIR`)")


def resolve_args(args) -> tuple[Config, str, str]:
    """(config, student folder, teacher spec) from --run or --student/--teacher."""
    if args.run:
        run = Path(args.run)
        if not (run / "config.yaml").is_file():
            raise ConfigError(f"--run {run}: no config.yaml there; give the output_dir of `kdistill distill`")
        cfg = load_run_config(run / "config.yaml")
        return cfg, args.student or str(run / "student"), args.teacher or cfg.teacher.model
    if not args.student or not args.teacher:
        raise ConfigError("give --run RUN_DIR, or both --student DIR and --teacher SPEC")
    cfg = Config()
    cfg.train.seq_len = args.seq_len
    return cfg, args.student, args.teacher


def output_path(args) -> Path | None:
    if args.out:
        return Path(args.out)
    return Path(args.run) / "eval.json" if args.run else None


def is_eval_result(path: Path) -> bool:
    """Whether `path` is a JSON object an earlier `kdistill eval` (or distill) wrote: eval merges into it."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and any(k in data for k in ("measured", "student", "teacher", "heldout"))


def check_outputs(args, student_dir: str, teacher_spec: str) -> None:
    """The output rule (kdistill/base/outputs.py) for --out and --lm-eval-dir, before any model loads: an eval
    result is merged into, anything else is replaced only with --force; never an input or a run's own file
    (the run's own eval.json, the default with --run, excepted)."""
    inputs = [p for p in (student_dir, teacher_spec, args.data, *(args.tasks or [])) if p and Path(p).exists()]
    out = output_path(args)
    own = Path(args.run).resolve() / "eval.json" if args.run else None
    if out is not None and out.resolve() != own:
        check_output(out, args.force or is_eval_result(out), inputs, "--out")
    if args.lm_eval_dir and args.tasks:
        check_output(args.lm_eval_dir, args.force, inputs, "--lm-eval-dir", own="lm-eval")


def write_result(path: Path, result: dict) -> dict:
    """Merge the result into the file's earlier measurements (record.merge) and write it; returns what
    was written."""
    old, when = {}, None
    if path.is_file():
        when = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc).isoformat(timespec="seconds")
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            kept = path.with_name(path.name + ".unreadable")
            path.replace(kept)
            print(f"note: {path} was not valid JSON; kept as {kept}, a new one written")
    merged = record.merge(old, result, when)
    fsutil.write_json(path, merged)
    return merged


OPTIONS = [("run", "--run"), ("student", "--student"), ("teacher", "--teacher"), ("data", "--data"),
           ("seq_len", "--seq-len"), ("batches", "--batches"), ("tasks", "--tasks"), ("limit", "--limit"),
           ("max_new_tokens", "--max-new-tokens"), ("no_speed", "--no-speed"), ("no_heldout", "--no-heldout"),
           ("lm_eval_dir", "--lm-eval-dir"), ("out", "--out"), ("teacher_server", "--teacher-server"),
           ("server_model", "--server-model"), ("server_api", "--server-api")]
DEFAULTS = {"seq_len": 128, "batches": 8}


def command_line(args) -> str:
    """The `kdistill eval` command these options make (also for the Python API, which has no argv)."""
    parts = ["kdistill", "eval"]
    for dest, flag in OPTIONS:
        value = getattr(args, dest, None)
        if value in (None, False, [], ()) or DEFAULTS.get(dest) == value:
            continue
        parts += [flag] if value is True else [flag, *map(shlex.quote, map(str, value if isinstance(value, list)
                                                                              else [value]))]
    return " ".join(parts)


def teacher_config(cfg: Config, spec: str, student_dir: str, args=None) -> Config:
    """The config `kdistill eval` opens its teacher with (`open_source`, as `distill` does): `cfg` with the
    teacher `spec` itself in full precision (a run's cache or several teachers are not what its student is
    compared with), on `args.teacher_server` when given (a run's own server otherwise); a student with its
    own tokenizer (`student.tokenizer`) reads the one saved beside it."""
    own = copy.deepcopy(cfg)
    own.teacher.model, own.teacher.cache, own.teacher.sources, own.teacher.load_in = spec, None, [], "full"
    if getattr(args, "teacher_server", None):
        own.teacher.server, own.teacher.sources = args.teacher_server, []
        own.teacher.server_model = args.server_model
        own.teacher.server_api = args.server_api or "vllm"
    elif own.teacher.server:
        own.teacher.server_model = getattr(args, "server_model", None) or own.teacher.server_model
        own.teacher.server_api = getattr(args, "server_api", None) or own.teacher.server_api
    if own.teacher.server:
        own.student.init = "random"  # nothing is initialised here: the teacher's weights are optional
    if own.student.tokenizer:
        own.student.tokenizer = student_dir
    return own


def check_student_folder(student_dir: str) -> bool:
    """Whether the student folder's weights are safetensors; ModelError naming --student when it has none."""
    if not Path(student_dir).is_dir():
        raise ModelError(f"--student {student_dir}: no such folder")
    return check_model_folder(student_dir, "--student")


def load_student(student_dir: str, use_safetensors: bool, tokenizer, device):
    """The student in fp32, checked to read `tokenizer` (the source's: what the student was trained on)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32, trust_remote_code=False,
                                                   use_safetensors=use_safetensors).to(device).eval()
    check_same_tokenizer(AutoTokenizer.from_pretrained(student_dir, trust_remote_code=False), tokenizer,
                         student_dir)
    return student


def heldout(args, run: Path | None, run_cfg, source, teacher_dir: str, batch_size: int, device):
    """(held-out batches collated by the source, eval.json's heldout_data, a warning or None); nothing with
    --no-heldout. The source reads the text as `distill` did (another tokenizer: both sides and the groups)."""
    p = eval_data.plan(args, run_cfg)
    if p["kind"] == "none":
        return [], None, None
    examples = source.load_examples(p["cfg"], device)
    training = None
    if p["split"]:
        training, examples = batching.split(examples, p["cfg"].data.heldout_fraction, p["cfg"].train.seed)
    elif run_cfg is not None:
        training = eval_data.training_split(run_cfg, source.tokenizer, teacher_dir, device)
    info = eval_data.source_record(p, args, examples, run)
    warning = eval_data.check_overlap(info, examples, training, run, source.tokenizer)
    pad = source.tokenizer.pad_token_id
    batches = [source.collate(examples[i:i + batch_size], pad) for i in range(0, len(examples), batch_size)]
    return batches[:args.batches], info, warning


def measure(args, cfg: Config, student_dir: str, teacher_spec: str, tasks: list, max_new: int, device,
            dtype) -> tuple[dict, dict, str, str | None]:
    """(result, folders for `measure_speeds`, the teacher's folder, an overlap warning or None): the teacher
    opened as `distill` opens it, the student loaded, everything that needs them measured. Nothing here
    outlives the call: the models are let go when it returns."""
    use_safetensors = check_student_folder(student_dir)
    own = teacher_config(cfg, teacher_spec, student_dir, args)
    source = open_source(own, device, dtype)
    student = load_student(student_dir, use_safetensors, source.tokenizer, device)
    reference = source.final_reference(own, device, dtype)
    run = eval_data.find_run(args.run, student_dir)
    run_cfg = cfg if args.run else eval_data.run_config(run)
    folder = reference.folder if reference is not None else source.folder
    batches, info, warning = heldout(args, run, run_cfg, source, folder, cfg.train.batch_size, device)
    if reference is None:  # a teacher server without local weights: what it can give, the held-out signal
        if tasks:
            raise ModelError("--tasks score the teacher's own answers, which needs its weights here; give "
                             "--teacher a folder that holds them, or drop --tasks")
        result, folders = {"student": {"parameters": count_parameters(student)}, "teacher": {}}, {}
    else:
        result, folders = measure_against(student, source, reference, batches, device, student_dir, cfg, max_new,
                                          tasks=tasks, task_limit=args.limit, speed=not args.no_speed)
    if batches and (reference is None or reference.against != source.against):
        result[heldout_key(source.against)] = heldout_metrics(student, source, batches, device)
    if batches:
        result["heldout_data"] = info
    return result, folders, folder, warning


def print_lm_eval(args, tasks: list, max_new: int, student_dir: str, teacher_dir: str, dtype, device) -> None:
    names = write_task_yamls(tasks, args.lm_eval_dir, max_new)
    where = torch.device(device).type if torch.device(device).type == "cpu" else str(device)
    student = lm_eval_command(student_dir, args.lm_eval_dir, names, "float32", where)
    teacher = lm_eval_command(teacher_dir, args.lm_eval_dir, names, str(dtype).replace("torch.", ""), where)
    print(f"lm-eval tasks in {args.lm_eval_dir}; run them with:\n  student: {student}\n  teacher: {teacher}")


def run_eval(args: EvalSettings) -> int:
    """Measure, print the table, merge the result into the output file (output_path); returns 0."""
    cfg, student_dir, teacher_spec = resolve_args(args)
    tasks = list(args.tasks or [])
    for path in tasks:
        read_task(path)  # bad task files fail before any model is loaded
    check_outputs(args, student_dir, teacher_spec)
    if tasks and cfg.student.tokenizer:
        raise ModelError("--tasks: benchmark tasks score both models with one tokenizer; this run's student has "
                         "its own (student.tokenizer). Evaluate tasks on the student alone")
    set_threads(0)
    device = pick_device("auto")
    dtype = pick_dtype("auto", device)
    max_new = args.max_new_tokens or cfg.eval.max_new_tokens
    result, folders, teacher_dir, warning = measure(args, cfg, student_dir, teacher_spec, tasks, max_new, device,
                                                    dtype)
    release_memory()  # the models are gone: each speed subprocess's memory would add to theirs
    measure_speeds(result, folders, cfg.eval.prompts, max_new, device)
    result = record.stamp(result, record.how(command_line(args), student_dir, f"{teacher_spec} ({teacher_dir})",
                                             device, dtype))
    print(format_table(result))
    if warning:
        print(warning)
    out = output_path(args)
    if out is not None:
        write_result(out, result)
        print(f"\nwrote {out}")
    if args.lm_eval_dir and tasks:
        print_lm_eval(args, tasks, max_new, student_dir, teacher_dir, dtype, device)
    return 0
