"""The `kdistill` command line: distill, cache, generate, eval, report, bench, design, export, config.

Building the parser imports no torch or transformers (the options live in kdistill/commands/args.py), so every
`--help` is quick; other libraries' progress bars are hidden unless `-v`.

Each subcommand's --help ends with an example. Every fault gets one line on stderr and an exit status:

    kdistill CMD: error: ...            2    a bad input (KdistillError), or the disk refused (full,
                                             read-only, permission denied, a file where a folder is needed)
    kdistill CMD: interrupted           130  Ctrl-C
    kdistill CMD: error: stopped by ... 130  Ctrl-C during training, after the checkpoint it writes
                                        143  SIGTERM during training, the same
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

from kdistill.base.console import quiet_libraries
from kdistill.base.errors import KdistillError, disk_error
from kdistill.commands.args import EXAMPLES, add_subcommands


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand and its options; imports no torch or transformers (kdistill/commands/args.py)."""
    from kdistill import __version__

    parser = argparse.ArgumentParser(prog="kdistill", description="Distill a causal LM into a small student.",
                                     epilog=EXAMPLES["distill"], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, other libraries' progress bars, and the traceback of any error")
    parser.add_argument("--version", action="version", version=f"kdistill {__version__}")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    return parser


# subcommand -> the module under kdistill/commands/ whose main(args) runs it (imported on use, so --help is quick)
COMMANDS = {"distill": "distill", "cache": "cache", "generate": "generate", "eval": "eval", "report": "report",
            "map-layers": "map_layers", "bench": None, "design": "design", "export": "export", "config": "config"}


def run_command(args) -> int:
    import importlib

    name = COMMANDS[args.command] or f"bench_{args.bench}"  # `kdistill bench loss|step`
    return importlib.import_module(f"kdistill.commands.{name}").main(args)


def _say(command: str, message: str) -> None:
    print(f"kdistill {command}: " + " ".join(message.split("\n")), file=sys.stderr, flush=True)


def _write_log(command: str, argv: list[str], e: BaseException) -> Path:
    """The traceback of an unforeseen exception, kept in $KDISTILL_CACHE/logs/; returns the file."""
    from kdistill.base import fsutil
    from kdistill.models.teacher import cache_root

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
        return getattr(user, "exit_code", 2)  # 130 for a run stopped by Ctrl-C after its checkpoint
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
    if not args.verbose:
        quiet_libraries()  # applied when (if) transformers, huggingface_hub, datasets get imported
    try:
        return run_command(args)
    except KeyboardInterrupt:
        _say(args.command, "interrupted")
        return 130
    except Exception as e:  # noqa: BLE001 - every fault gets one line and an exit status (module docstring)
        return _fault(args.command, argv, e, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
