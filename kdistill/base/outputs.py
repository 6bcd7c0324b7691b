"""One rule for every command that writes a file or folder the user names (`--out`).

    check_output("runs/demo/student-int8", force=False, inputs=["runs/demo/student"], key="--out")

- What exists is never replaced without `force`.
- An output is never an input, inside an input, or a folder holding an input, even with `force`.
- An output is never a run folder (what `kdistill distill` wrote: its marker `.kdistill-run`, or, from a
  kdistill before the marker, config.yaml beside its metrics, checkpoints or eval.json), a folder holding
  one, or a part of one that the run owns, even with `force`.
Writers then write beside the target and rename into place (fsutil.atomic_dir, fsutil.write_bytes), so a
failure leaves what was there before.
"""
from __future__ import annotations

import os
from pathlib import Path

from kdistill.base.errors import ConfigError

RUN_MARKER = ".kdistill-run"  # written first into every run folder: what makes a folder a run
RUN_OWNED = (RUN_MARKER, "checkpoints", "student", "adapter", "eval.json", "metrics.jsonl", "config.yaml",
             "kdistill.log", "resumes.jsonl", "data_report.json",
             "tensorboard", "aim", "wandb")  # what a run folder's own files are called (trackers: train/tracking)


def is_run_folder(folder: str | os.PathLike) -> bool:
    """A folder `kdistill distill` wrote: its marker, or (a kdistill before the marker) its config.yaml
    beside the metrics, checkpoints or eval.json it made (a user's own config.yaml alone is not a run)."""
    folder = Path(folder)
    return (folder / RUN_MARKER).is_file() or (folder / "config.yaml").is_file() and any(
        (folder / m).exists() for m in ("metrics.jsonl", "checkpoints", "eval.json"))


def _inside(a: Path, b: Path) -> bool:
    """a is b or lies inside b (both resolved)."""
    return a == b or b in a.parents


def _run_folder_at_or_below(path: Path, depth: int = 2) -> Path | None:
    """`path` or a folder up to `depth` levels below it that is a run folder (runs/NAME is the usual shape)."""
    if not path.is_dir() or path.is_symlink():
        return None
    if is_run_folder(path):
        return path
    if depth == 0:
        return None
    try:
        children = sorted(p for p in path.iterdir() if p.is_dir())
    except OSError:
        return None
    return next((found for c in children if (found := _run_folder_at_or_below(c, depth - 1))), None)


def check_output(out: str | os.PathLike, force: bool, inputs: list = (), key: str = "--out") -> Path:
    """Refuse an output that breaks the rule above with a ConfigError naming `key`; returns `out` resolved."""
    target = Path(out).resolve()
    for given in inputs:
        source = Path(given).resolve()
        if _inside(target, source) or _inside(source, target):
            where = "is" if target == source else "is inside" if _inside(target, source) else "holds"
            raise ConfigError(f"{key} {out} {where} the input {given}; the output must not touch what it is "
                              "made from: choose another path")
    run = _run_folder_at_or_below(target)
    if run is not None:
        raise ConfigError(f"{key} {out} {'is' if run == target else 'holds'} the run folder {run} "
                          "(checkpoints, student, metrics): choose a new path; a run folder is never replaced")
    parent = target.parent
    if is_run_folder(parent) and target.name in RUN_OWNED:
        raise ConfigError(f"{key} {out} is the run's own {target.name} in {parent}; choose another name")
    if target.exists() and not force:
        raise ConfigError(f"{key} {out} exists; pass --force to replace it, or choose another path")
    return target
