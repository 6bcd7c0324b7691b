"""One rule for every command that writes a file or folder the user names (`--out`).

    check_output("runs/demo/student-int8", force=False, inputs=["runs/demo/student"], key="--out")

- What exists is never replaced without `force`, except a folder the same command wrote before (its
  marker `.kdistill-output` names the command: `kdistill report` and `map-layers` refresh their own
  output); a file the command merges into (eval.json) is the caller's to recognise.
- An output is never an input, inside an input, or a folder holding an input, even with `force`.
- An output is never a run folder (what `kdistill distill` wrote: its marker `.kdistill-run`, or, from a
  kdistill before the marker, config.yaml beside its metrics, checkpoints or eval.json), a folder holding
  one, or a part of one that the run owns, even with `force`.
Writers then write beside the target and rename into place (fsutil.atomic_dir, fsutil.write_bytes), so a
failure leaves what was there before.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from kdistill.base import fsutil
from kdistill.base.errors import ConfigError

RUN_MARKER = ".kdistill-run"  # written first into every run folder: what makes a folder a run
OWN_MARKER = ".kdistill-output"  # in a folder a command wrote: {"command": NAME}
OWN_FILES = {"report": ("report.html", "report.md", "*.png"),  # what each command writes into its folder
             "map-layers": ("layer_map.yaml", "layer_map.json", "layer_map.png"),
             "lm-eval": ("*.yaml", "*.jsonl")}
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


def mark_own(folder: str | os.PathLike, command: str) -> None:
    """Say that `command` wrote `folder` (write it into the temporary folder before the rename)."""
    fsutil.write_json(Path(folder) / OWN_MARKER, {"command": command})


def own_output(folder: str | os.PathLike, command: str) -> bool:
    """Whether `folder` is one `command` wrote (its marker) and holds nothing else (`OWN_FILES`), so the
    same command may refresh it: a file the user added there makes it theirs."""
    folder = Path(folder)
    try:
        if json.loads((folder / OWN_MARKER).read_text()).get("command") != command:
            return False
        return all(p.name == OWN_MARKER or any(p.match(n) for n in OWN_FILES.get(command, ()))
                   for p in folder.iterdir())
    except (OSError, ValueError, AttributeError):
        return False


def check_output(out: str | os.PathLike, force: bool, inputs: list = (), key: str = "--out",
                 own: str | None = None) -> Path:
    """Refuse an output that breaks the rule above with a ConfigError naming `key`; returns `out` resolved.
    `own`: the command's name; a folder it wrote before (`own_output`) is replaced without `force`."""
    target = Path(out).resolve()
    for given in inputs:  # a path, or (what names it, path): ("data.path", "notes.jsonl")
        label, given = given if isinstance(given, tuple) else ("", given)
        source = Path(given).resolve()
        if _inside(target, source) or _inside(source, target):
            where = "is" if target == source else "is inside" if _inside(target, source) else "holds"
            raise ConfigError(f"{key} {out} {where} the input {given}{f' ({label})' if label else ''}; the "
                              "output must not touch what it is made from: choose another path")
    run = _run_folder_at_or_below(target)
    if run is not None:
        raise ConfigError(f"{key} {out} {'is' if run == target else 'holds'} the run folder {run} "
                          "(checkpoints, student, metrics): choose a new path; a run folder is never replaced")
    parent = target.parent
    if is_run_folder(parent) and target.name in RUN_OWNED:
        raise ConfigError(f"{key} {out} is the run's own {target.name} in {parent}; choose another name")
    if target.exists() and not force and not (own and own_output(target, own)):
        mine = (f" and is not only what `kdistill {own}` wrote there before ({OWN_MARKER} and "
                f"{', '.join(OWN_FILES.get(own, ()))})") if own and target.is_dir() else ""
        raise ConfigError(f"{key} {out} exists{mine}; pass --force to replace it, or choose another path")
    return target


def check_run_dir(folder: str | os.PathLike, inputs: list, key: str = "output_dir") -> None:
    """A run folder is never an input or inside one, and no input lies in what the run writes there
    (`RUN_OWNED`: --overwrite moves it aside, the run rewrites it): ConfigError naming both keys."""
    target = Path(folder).resolve()
    for label, given in inputs:
        source = Path(given).resolve()
        if _inside(target, source):
            raise ConfigError(f"{key} {folder} {'is' if target == source else 'is inside'} {label}={given}: a run "
                              "writes its checkpoints, student and metrics there; choose another output_dir")
        owned = next((n for n in RUN_OWNED if _inside(source, target / n)), None)
        if owned is not None:
            raise ConfigError(f"{label}={given} is inside {key} {folder}/{owned}, which the run writes (and "
                              "--overwrite moves aside): copy it out of the run folder, or choose another output_dir")
