"""The output folder of a `kdistill distill` run: one run at a time, nothing of the user's ever lost.

    with run_folder(cfg, resume, overwrite) as run:     # lock, cleanup, resume point, old run aside
        ...train, calling run.on_checkpoint(path) after each checkpoint...

- A lock (`fsutil.run_lock`) keeps a second process out of the folder; a killed holder's lock is free.
- Temporary folders left by a killed write are removed first (`checkpoint.clean_partial`).
- `--resume` takes the newest checkpoint that verifies (`checkpoint.resume_point`), says which it
  skipped and why, and refuses a config that changed what the run means (`config_changes`), naming
  the keys; safe keys (`SAFE_TO_CHANGE`) may change and the change is recorded in `resumes.jsonl`.
- A folder that holds a run with no checkpoint and no student (it stopped before its first
  checkpoint) holds nothing to protect: a new run starts there, and `--resume` starts it from step 0.
- `--overwrite` moves the old run aside (`.replaced/`) and deletes it only once the new run has written
  its first checkpoint; if the new run fails before that, the old run is put back.
- A fresh run that fails before its first checkpoint removes what it wrote (config.yaml, metrics), so
  the folder holds what it held before and the corrected command needs no flag.
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from kdistill.base import fsutil
from kdistill.base.errors import ConfigError
from kdistill.config.schema import dump, to_dict
from kdistill.train import checkpoint

log = logging.getLogger("kdistill")
RUN_MARKERS = ("config.yaml", "metrics.jsonl", "checkpoints", "student", "adapter", "eval.json", "resumes.jsonl",
               "kdistill.log", "data_report.json")
PRECIOUS = ("checkpoints", "student", "adapter", "eval.json")  # what a run made that is worth keeping
ASIDE = ".replaced"
SAFE_TO_CHANGE = ("train.max_steps", "train.checkpoint_every", "train.keep_checkpoints", "train.eval_every",
                  "train.threads", "eval.", "cache.",
                  # where the teacher server is and how it is asked: the parity check proves it is the same teacher
                  "teacher.server", "teacher.server_api_key_env", "teacher.server_prefetch", "teacher.server_timeout",
                  "teacher.server_retries", "teacher.parity_check", "teacher.parity_max_kl")
IGNORED = ("output_dir",)  # a run folder that was moved is the same run


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
    for k in set(b) - set(a):  # a key added since the checkpoint was written counts as its default then
        a[k] = default.get(k)
    changed = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k not in IGNORED]
    lines = {k: f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed}
    safe = [k for k in changed if any(k == s or (s.endswith(".") and k.startswith(s)) for s in SAFE_TO_CHANGE)]
    return [lines[k] for k in changed if k not in safe], [lines[k] for k in safe]


def has_progress(folder: Path) -> bool:
    return any((folder / m).exists() for m in PRECIOUS)


@dataclass
class RunFolder:
    path: Path
    resume_from: Path | None
    aside: Path | None = None
    checkpointed: bool = False
    saved_config: dict | None = None

    def on_checkpoint(self, path: Path) -> None:
        """The new run has a checkpoint: the old run it replaced can go."""
        self.checkpointed = True
        if self.aside is not None:
            shutil.rmtree(self.aside, ignore_errors=True)
            self.aside = None


def _resume(cfg, folder: Path) -> tuple[Path | None, dict | None]:
    found, skipped = checkpoint.resume_point(folder)
    for line in skipped:
        print(f"--resume: {line}", flush=True)
    if found is None:
        if has_progress(folder):
            raise ConfigError(f"--resume: {folder} has no checkpoint that verifies ({len(skipped)} damaged); start "
                              "without --resume and with --overwrite to begin again")
        print(f"--resume: {folder} has no checkpoint yet (the run stopped before its first one); starting from "
              "step 0", flush=True)
        return None, None
    state = json.loads((found / "trainer_state.json").read_text())
    saved = state.get("config")
    if saved is None:
        log.warning("checkpoint %s records no config (written by an older kdistill); not compared", found)
        return found, None
    unsafe, safe = config_changes(saved, to_dict(cfg))
    if unsafe:
        raise ConfigError(f"--resume: this config changes what the run in {folder} means ({'; '.join(unsafe)}). "
                          "Resume with the config it was started with (its config.yaml), or start a new run "
                          "in another output_dir")
    if safe:
        print(f"--resume: changed since {found.name}: {'; '.join(safe)}", flush=True)
        fsutil.append_jsonl(folder / "resumes.jsonl", {"checkpoint": found.name, "changed": safe,
                                                       "time": time.time()})
    return found, saved


def _prepare_fresh(folder: Path, overwrite: bool) -> Path | None:
    """Make room for a new run; returns the folder the old run was moved into, if any."""
    present = [m for m in RUN_MARKERS if (folder / m).exists()]
    if not present:
        if any(p.name != fsutil.LOCK_NAME for p in folder.iterdir()) and not overwrite:
            names = sorted(p.name for p in folder.iterdir() if p.name != fsutil.LOCK_NAME)[:5]
            raise ConfigError(f"output_dir {folder} is not empty ({', '.join(names)}) and holds no kdistill run; "
                              "choose another output_dir or pass --overwrite")
        return None
    if not has_progress(folder):
        print(f"output_dir {folder} holds a run that stopped before its first checkpoint; starting again there",
              flush=True)
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
    for m in RUN_MARKERS:
        target = run.path / m
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    if run.aside is not None:
        for p in run.aside.iterdir():
            p.rename(run.path / p.name)
        run.aside.rmdir()
        print(f"the previous run in {run.path} was put back", flush=True)


@contextlib.contextmanager
def run_folder(cfg, resume: bool, overwrite: bool):
    folder = Path(cfg.output_dir)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"output_dir {folder} is a file; give a folder path (it is created if missing)")
    created = not folder.exists()
    try:
        with fsutil.run_lock(folder):
            for p in checkpoint.clean_partial(folder):
                log.warning("removed %s, left by a killed write", p)
            if (folder / ASIDE).is_dir() and not any((folder / m).exists() for m in PRECIOUS):
                _undo(RunFolder(folder, None, folder / ASIDE))  # a killed --overwrite: the old run comes back
            resume_from, saved = _resume(cfg, folder) if resume else (None, None)
            run = RunFolder(folder, resume_from, None if resume_from else _prepare_fresh(folder, overwrite),
                            checkpointed=resume_from is not None, saved_config=saved)
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
