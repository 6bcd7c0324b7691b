"""The `kdistill` command line: distill, cache, generate, eval, report, bench, design, export.

Each subcommand's --help ends with an example. Every fault gets one line on stderr and an exit status:

    kdistill CMD: error: ...            2    a bad input (KdistillError), or the disk refused (full,
                                             read-only, permission denied, a file where a folder is needed)
    kdistill CMD: interrupted           130  Ctrl-C
    kdistill CMD: internal error: ...   1    anything else (a bug): the traceback is written to
                                             $KDISTILL_CACHE/logs/CMD-DATE-TIME-PID.log (default
                                             ~/.cache/kdistill/logs), and `-v` also prints it
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from pathlib import Path

from .errors import KdistillError, disk_error

EXAMPLES = {
    "distill": "examples:\n  kdistill distill --config configs/demo.yaml\n"
               "  kdistill distill --config configs/demo.yaml train.max_steps=20 output_dir=runs/quick\n"
               "  kdistill distill --config configs/demo.yaml --resume",
    "generate": "example:\n  kdistill generate --model runs/demo/student \"Once upon a time\"",
    "eval": "examples:\n  kdistill eval --student runs/demo/student --teacher default --data notes.txt --out e.json\n"
            "  kdistill eval --run runs/demo --tasks tests/fixtures/tasks/tiny_mc.jsonl --lm-eval-dir runs/lm_tasks",
    "report": "examples:\n  kdistill report runs/demo\n"
              "  kdistill report runs/small runs/medium runs/large --min-retention 0.9 --out runs/report",
    "bench": "example:\n  kdistill bench loss --tokens 4096 --vocab 49152 --hidden 576",
    "design": "examples:\n  kdistill design --teacher default --compression 4\n"
              "  kdistill design --teacher default --params 30M --out configs/student_30m.yaml",
    "cache": "examples:\n  kdistill cache --config configs/demo.yaml cache.out=runs/cache cache.k=50\n"
             "  kdistill cache --inspect runs/cache\n"
             "  kdistill distill --config configs/demo.yaml teacher.cache=runs/cache",
    "export": "example:\n  kdistill export --model runs/demo/student --format gguf --type Q8_0 --out student.gguf",
}


def _sub(subs, name: str, help_text: str) -> argparse.ArgumentParser:
    return subs.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES.get(name),
                           formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdistill", description="Distill a causal LM into a small student.",
                                     epilog=EXAMPLES["distill"], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and the traceback of any error")
    subs = parser.add_subparsers(dest="command", required=True)

    p = _sub(subs, "distill", "Distill a teacher into a student (config file plus key.path=value overrides).")
    p.add_argument("--config", help="YAML file stating what differs from the defaults")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    p.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in output_dir")

    from .cache import command as cache_command

    p = _sub(subs, "cache", "Run the teacher once over the data and write a compact teacher cache (or --inspect one).")
    cache_command.add_arguments(p)

    p = _sub(subs, "generate", "Generate text with a model folder.")
    p.add_argument("--model", required=True)
    p.add_argument("prompt", nargs="+")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")

    p = _sub(subs, "eval", "Compare a student with its teacher: held-out agreement, benchmarks, size and speed.")
    p.add_argument("--run", help="a `kdistill distill` output_dir: its student, teacher and held-out split; "
                                 "the result is merged into RUN/eval.json")
    p.add_argument("--student", help="student folder (default with --run: RUN/student)")
    p.add_argument("--teacher", help="hub id, folder, .gguf file or 'default' (default with --run: from its config)")
    p.add_argument("--data", help="data file (default: teacher-generated data)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--tasks", nargs="+", metavar="FILE.jsonl",
                   help="benchmark files, multiple choice or generative (format: kdistill/evaluation/tasks.py)")
    p.add_argument("--limit", type=int, help="use at most this many records of each task")
    p.add_argument("--max-new-tokens", type=int, help="for completions, speed and generative tasks (default 32)")
    p.add_argument("--no-speed", action="store_true", help="skip the generation speed and memory measurement")
    p.add_argument("--lm-eval-dir", help="also write lm-eval task YAMLs for --tasks here")
    p.add_argument("--out", help="write the result as JSON here (default with --run: RUN/eval.json)")

    p = _sub(subs, "report", "An HTML page (and Markdown) of one or more runs: curves, tables, completions, "
                             "quality vs size.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="output folder (default: RUN_DIR/report, or PARENT/report for several runs)")
    p.add_argument("--min-retention", type=float, default=0.9,
                   help="recommend the smallest student that keeps this share of the teacher's quality")
    p.add_argument("--title", default="kdistill report")

    p = _sub(subs, "bench", "Benchmarks that print their numbers.")
    bench = p.add_subparsers(dest="bench", required=True)
    from .losses import bench as loss_bench

    b = bench.add_parser("loss", help="loss time and peak memory: seed-style reference vs kdistill",
                         epilog=EXAMPLES["bench"], formatter_class=argparse.RawDescriptionHelpFormatter)
    loss_bench.add_arguments(b)

    from .students import design

    p = _sub(subs, "design", "Print candidate students for a teacher and a size; write the chosen one as a config.")
    design.add_arguments(p)

    from .export import cli as export_cli

    p = _sub(subs, "export", "Quantise a student or export it as GGUF.")
    export_cli.add_arguments(p)
    return parser


def _distill(args) -> int:
    from .config import load_config
    from .distill import distill

    distill(load_config(args.config, args.overrides), resume=args.resume, overwrite=args.overwrite)
    return 0


def _cache(args) -> int:
    from .cache import command as cache_command

    return cache_command.main(args)


def _generate(args) -> int:
    from .generate import generate_text

    for prompt in args.prompt:
        print(generate_text(args.model, prompt, args.max_new_tokens, args.temperature))
    return 0


def _eval(args) -> int:
    from .evaluation.command import run_eval

    return run_eval(args)


def _report(args) -> int:
    from .report.command import run_report

    return run_report(args)


def _bench(args) -> int:
    from .losses import bench as loss_bench

    return loss_bench.main(args)


def _design(args) -> int:
    from .students import design

    return design.main(args)


def _export(args) -> int:
    from .export import cli as export_cli

    return export_cli.main(args)


COMMANDS = {"distill": _distill, "cache": _cache, "generate": _generate, "eval": _eval, "report": _report,
            "bench": _bench, "design": _design, "export": _export}


def _say(command: str, message: str) -> None:
    print(f"kdistill {command}: " + " ".join(message.split("\n")), file=sys.stderr, flush=True)


def _write_log(command: str, argv: list[str], e: BaseException) -> Path:
    """The traceback of an unforeseen exception, kept in $KDISTILL_CACHE/logs/; returns the file."""
    from . import fsutil
    from .teacher import cache_root

    path = cache_root() / "logs" / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    lines = [f"kdistill {' '.join(argv)}", f"python {sys.version.split()[0]}, cwd {os.getcwd()}", ""]
    fsutil.write_text(path, "\n".join(lines) + "".join(traceback.format_exception(type(e), e, e.__traceback__)))
    return path


def _fault(command: str, argv: list[str], e: Exception, verbose: bool) -> int:
    """One line on stderr for `e`; returns the exit status: 2 for the user's error, 1 for a bug."""
    if verbose:
        traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
    user = e if isinstance(e, KdistillError) else disk_error(e) if isinstance(e, OSError) else None
    if user is not None:
        _say(command, f"error: {user}")
        return 2
    text = " ".join(str(e).split())[:300]
    what = f"{type(e).__name__}: {text}" if text else type(e).__name__
    try:
        where = f"the traceback is in {_write_log(command, argv, e)}"
    except Exception as log_error:  # noqa: BLE001 - no log (disk full?): the traceback goes to stderr instead
        if not verbose:
            traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
        where = f"the traceback is above (no log: {type(log_error).__name__}: {log_error})"
    else:
        where += "" if verbose else "; rerun with -v to see it"
    _say(command, f"internal error: {what}; {where}")
    return 1


def main(argv=None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        _say(args.command, "interrupted")
        return 130
    except Exception as e:  # noqa: BLE001 - every fault gets one line and an exit status (module docstring)
        return _fault(args.command, argv, e, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
