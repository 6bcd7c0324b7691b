"""The output folder of a `kdistill distill` run: one run at a time, nothing of the user's ever lost.

    with run_folder(cfg, resume, overwrite) as run:     # lock, cleanup, resume point, old run aside
        ...train, calling run.on_checkpoint(path) after each checkpoint...

- A folder is a run when kdistill wrote its marker there (`outputs.RUN_MARKER`, `.kdistill-run`, the first
  file a run writes), or, for a run of a kdistill before the marker, when it holds a checkpoint with
  checksums.json: never because of file names a user might use. Only what a run writes
  (`outputs.RUN_OWNED`) is ever removed or moved, and only in a run folder; anything else in output_dir
  stays, with or without --overwrite. A folder that is no run but holds a file a run would write (the
  user's own config.yaml) is refused untouched.
- A lock (`fsutil.run_lock`) keeps a second process out of the folder; a killed holder's lock is free.
- Temporary folders left by a killed write are removed first (`checkpoint.clean_partial`).
- `--resume` takes the newest checkpoint that verifies (`checkpoint.resume_point`), says which it
  skipped and why, and refuses a config that changed what the run means (`config_changes`), naming
  the keys; safe keys (`SAFE_TO_CHANGE`) may change and the change is recorded in `resumes.jsonl`. It
  refuses data files that changed since the checkpoint (`data_files`, recorded in every checkpoint),
  naming them, unless `accept_changed_data` (`--accept-changed-data`): then the change is recorded too.
- `--resume` and `--overwrite` together are refused: one continues the run, the other replaces it.
- A run folder with no checkpoint and no student (it stopped before its first checkpoint) holds
  nothing to protect: a new run starts there, and `--resume` starts it from step 0.
- `--overwrite` moves the old run aside (`.replaced/`) and deletes it only once the new run has written
  its first checkpoint; if the new run fails before that, or is killed, the old run is put back.
- A fresh run that fails before its first checkpoint removes what it wrote (config.yaml, metrics, its
  marker), so the folder holds what it held before and the corrected command needs no flag.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from kdistill import __version__
from kdistill.base import fsutil
from kdistill.base.errors import ConfigError, DataError
from kdistill.base.outputs import RUN_MARKER, RUN_OWNED
from kdistill.config.schema import dump, to_dict
from kdistill.report.runs import read_metrics
from kdistill.run import data_files
from kdistill.train import checkpoint

log = logging.getLogger("kdistill")
RUN_FILES = tuple(n for n in RUN_OWNED if n != RUN_MARKER)  # moved aside or removed; the marker stays
PRECIOUS = ("checkpoints", "student", "adapter", "eval.json")  # what a run made that is worth keeping
ASIDE = ".replaced"
SAFE_TO_CHANGE = ("train.max_steps", "train.epochs", "train.time_budget", "train.keep_best", "train.checkpoint_every", "train.keep_checkpoints", "train.eval_every",
                  "train.threads", "eval.", "cache.",
                  # where the teacher server is and how it is asked: the parity check proves it is the same teacher
                  "teacher.server", "teacher.server_api_key_env", "teacher.server_prefetch", "teacher.server_timeout",
                  "teacher.server_retries", "teacher.parity_check", "teacher.parity_max_kl")
IGNORED = ("output_dir",)  # a run folder that was moved is the same run
BEFORE_KEY = {"data.pack": False}  # what a run from before a key existed did, where it is not the key's default


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) and not key.startswith("loss.") else {key: v})
    return out


def config_changes(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """(keys whose change would make another run, keys that are safe to change), each 'key: old -> new'."""
    from kdistill.config.schema import Config

    a, b, default = _flat(saved), _flat(current), _flat(to_dict(Config()))
    for k in set(b) - set(a):  # a key added since the checkpoint: what the run did then (its default, mostly)
        a[k] = BEFORE_KEY.get(k, default.get(k))
    changed = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k not in IGNORED]
    lines = {k: f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed}
    safe = [k for k in changed if any(k == s or (s.endswith(".") and k.startswith(s)) for s in SAFE_TO_CHANGE)]
    return [lines[k] for k in changed if k not in safe], [lines[k] for k in safe]


def has_progress(folder: Path) -> bool:
    return any((folder / m).exists() for m in PRECIOUS)


def is_run(folder: Path) -> bool:
    """kdistill wrote this folder: its marker, or (before the marker) a checkpoint with its checksums."""
    return (folder / RUN_MARKER).is_file() or any((p / checkpoint.CHECKSUMS).is_file()
                                                  for p in checkpoint.list_checkpoints(folder))


def check_flags(resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite together: --resume continues the run in output_dir, "
                          "--overwrite replaces it; pass one of them")


def _own_leftover(name: str) -> bool:
    """`.NAME.<random>.tmp` of a name a run writes: a kill while the run wrote its first file (the marker)."""
    m = fsutil.PARTIAL.match(name)
    return m is not None and m["name"] in RUN_OWNED


def not_a_run(folder: Path, overwrite: bool) -> None:
    """Refuse a folder that holds no run but files of the user's: any named as a run's own (the run would
    write over them), or any at all without --overwrite (the run is then written beside them)."""
    clash = sorted(n for n in (*RUN_OWNED, ASIDE) if (folder / n).exists() or (folder / n).is_symlink())
    if clash:
        raise ConfigError(f"output_dir {folder} holds {', '.join(clash)}, which kdistill did not write (there is "
                          f"no {RUN_MARKER}), and a run writes files of those names; kdistill never deletes or "
                          "moves what it did not write, even with --overwrite. Choose another output_dir, or "
                          "move those files out of it")
    names = sorted(p.name for p in folder.iterdir() if p.name != fsutil.LOCK_NAME and not _own_leftover(p.name)) \
        if folder.is_dir() else []
    if names and not overwrite:
        raise ConfigError(f"output_dir {folder} is not empty ({', '.join(names[:5])}) and holds no kdistill run; "
                          "choose another output_dir, or pass --overwrite to write the run beside those files "
                          "(they stay as they are)")


def mark(folder: Path) -> None:
    """Make `folder` a run folder (before anything else of the run is written there)."""
    if not (folder / RUN_MARKER).is_file():
        fsutil.write_json(folder / RUN_MARKER, {"kdistill": __version__, "created": time.time(),
                                                "note": "a kdistill distill run folder: kdistill may replace "
                                                        "the files it wrote here (--overwrite), and no others"})


@dataclass
class RunFolder:
    path: Path
    resume_from: Path | None
    aside: Path | None = None
    checkpointed: bool = False
    saved_config: dict | None = None
    data_files: dict = field(default_factory=dict)  # {config key: {file: sha256}}, into every checkpoint

    def on_checkpoint(self, path: Path) -> None:
        """The new run has a checkpoint: the old run it replaced can go."""
        self.checkpointed = True
        if self.aside is not None:
            shutil.rmtree(self.aside, ignore_errors=True)
            self.aside = None


def _record_changes(folder: Path, found: Path, safe: list[str], data: list[str]) -> None:
    for what, lines in (("changed", safe), ("data changed", data)):
        if lines:
            print(f"--resume: {what} since {found.name}: {'; '.join(lines)}", flush=True)
    if safe or data:
        fsutil.append_jsonl(folder / "resumes.jsonl", {"checkpoint": found.name, "changed": safe,
                                                       **({"data_changed": data} if data else {}),
                                                       "time": time.time()})


def _resume(cfg, folder: Path, files: dict, accept_changed_data: bool) -> tuple[Path | None, dict | None]:
    found, skipped = checkpoint.resume_point(folder)
    for line in skipped:
        print(f"--resume: {line}", flush=True)
    if found is None:
        if is_run(folder) and has_progress(folder):
            raise ConfigError(f"--resume: {folder} has no checkpoint that verifies ({len(skipped)} damaged); start "
                              "without --resume and with --overwrite to begin again")
        print(f"--resume: {folder} has no checkpoint yet (the run stopped before its first one, or never "
              "started); starting from step 0", flush=True)
        return None, None
    # a last line cut by a kill is said now (trim_metrics drops it); a broken one before it stops here
    read_metrics(folder / "metrics.jsonl", say=lambda note: print(f"--resume: {note}", flush=True))
    state = checkpoint.read_state(found)
    saved = state.get("config")
    safe = []
    if saved is None:
        log.warning("checkpoint %s records no config (written by an older kdistill); not compared", found)
    else:
        unsafe, safe = config_changes(saved, to_dict(cfg))
        if unsafe:
            raise ConfigError(f"--resume: this config changes what the run in {folder} means ({'; '.join(unsafe)}). "
                              "Resume with the config it was started with (its config.yaml), or start a new run "
                              "in another output_dir")
    recorded = state.get("data_files")
    data = data_files.changes(recorded, files) if isinstance(recorded, dict) else []
    if recorded is None:
        log.warning("checkpoint %s records no data fingerprint (written by an older kdistill); not compared", found)
    if data and not accept_changed_data:
        raise DataError(f"--resume: the data differs from what {found} was trained on ({'; '.join(data)}). Resume "
                        "with that data, or pass --accept-changed-data to continue on the new data on purpose "
                        "(recorded in resumes.jsonl)")
    _record_changes(folder, found, safe, data)
    return found, saved


def _prepare_fresh(folder: Path, overwrite: bool) -> Path | None:
    """Make room for a new run; returns the folder the old run was moved into, if any."""
    if not is_run(folder):
        not_a_run(folder, overwrite)
        mark(folder)
        return None
    mark(folder)  # a run of a kdistill before the marker: marked before anything of it moves
    present = [m for m in RUN_FILES if (folder / m).exists()]
    if not has_progress(folder):
        if present:
            print(f"output_dir {folder} holds a run that stopped before its first checkpoint; starting again "
                  "there", flush=True)
        for m in present:
            target = folder / m
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        return None
    if not overwrite:
        raise ConfigError(f"output_dir {folder} already holds a run ({', '.join(present)}). Use --resume to "
                          "continue it, --overwrite to replace it, or set output_dir=NEW_FOLDER")
    aside = folder / ASIDE
    if aside.exists():
        shutil.rmtree(aside)
    aside.mkdir()
    for m in present:
        (folder / m).rename(aside / m)
    return aside


def _undo(run: RunFolder) -> None:
    """A fresh run failed before its first checkpoint: remove what it wrote, put back what it replaced."""
    for m in RUN_FILES + ((RUN_MARKER,) if run.aside is None else ()):
        target = run.path / m
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    if run.aside is not None:
        for p in run.aside.iterdir():
            p.rename(run.path / p.name)
        run.aside.rmdir()
        print(f"the previous run in {run.path} was put back", flush=True)


@contextlib.contextmanager
def run_folder(cfg, resume: bool, overwrite: bool, accept_changed_data: bool = False):
    check_flags(resume, overwrite)
    folder = Path(cfg.output_dir)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"output_dir {folder} is a file; give a folder path (it is created if missing)")
    created = not folder.exists()
    files = data_files.data_files(cfg)
    try:
        with fsutil.run_lock(folder):
            if is_run(folder):
                for p in checkpoint.clean_partial(folder):
                    log.warning("removed %s, left by a killed write", p)
                if (folder / ASIDE).is_dir() and not has_progress(folder):
                    _undo(RunFolder(folder, None, folder / ASIDE))  # a killed --overwrite: the old run comes back
            resume_from, saved = _resume(cfg, folder, files, accept_changed_data) if resume else (None, None)
            if resume_from is not None:
                mark(folder)
            run = RunFolder(folder, resume_from, None if resume_from else _prepare_fresh(folder, overwrite),
                            checkpointed=resume_from is not None, saved_config=saved, data_files=files)
            try:
                fsutil.write_text(folder / "config.yaml", dump(cfg))
                yield run
            except BaseException:
                if not run.checkpointed:
                    _undo(run)
                raise
    finally:
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
