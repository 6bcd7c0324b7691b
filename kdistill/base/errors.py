"""User-facing errors.

Every bad input the user can fix raises `KdistillError` (or a subclass) with a message that names the
file, line or config key and says how to fix it. The CLI prints the message on one line without a
traceback and exits with status 2. An `OSError` from the disk (full, read-only, permission denied, a file
where a folder is needed) is one too: `disk_error` turns it into a `DiskError` naming the path. Anything
else is a bug: the CLI prints one line and keeps the traceback in a log file (see kdistill/commands/cli.py).
"""
from __future__ import annotations

import errno
import os
from pathlib import Path


class KdistillError(Exception):
    """An error in the user's input (config, files, models) with a message that says how to fix it."""


class ConfigError(KdistillError):
    """A config key or value is wrong; the message names the key path (e.g. `train.seq_len`)."""


class DataError(KdistillError):
    """A data file is unusable; the message names the file and, where it applies, the line."""


class ModelError(KdistillError):
    """A teacher or student cannot be loaded or does not fit the run (vocabulary, positions)."""


class TeacherUnavailable(KdistillError):
    """The teacher could not give a signal (a server down after retries, or a wrong answer); raised before
    the step changed any weight, so the run can checkpoint the step before and stop."""


class DiskError(KdistillError):
    """The disk refused a read or write (full, read-only, no permission, a file in the way)."""


_ELSEWHERE = "free space or choose another output_dir"
DISK_FAULTS = {  # errno -> the message; {path} is the file the OSError names, {blocker} the file in the way
    errno.ENOSPC: "disk full while writing {path}: " + _ELSEWHERE,
    getattr(errno, "EDQUOT", -1): "disk quota exceeded while writing {path}: " + _ELSEWHERE,
    errno.EROFS: "{path} is on a read-only file system: choose another output_dir",
    errno.EACCES: "permission denied for {path}: check its owner and mode (`ls -ld`) or choose another path",
    errno.EPERM: "permission denied for {path}: check its owner and mode (`ls -ld`) or choose another path",
    errno.ENOTDIR: "{blocker} is a file where a folder is needed{within}: move it away or choose another path",
    errno.EEXIST: "{path} already exists{as_file}: move it away or choose another path",
    errno.EISDIR: "{path} is a folder where a file is needed: move it away or choose another path",
}


def _file_in_the_way(path: Path) -> Path:
    """The deepest existing non-folder on the way to `path` (which is the reason for ENOTDIR)."""
    return next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)


def disk_error(e: OSError) -> DiskError | None:
    """The one-line error for an OSError that comes from the disk, or None for any other (a bug)."""
    template = DISK_FAULTS.get(e.errno)
    if template is None:
        return None
    if not isinstance(e.filename, (str, bytes, os.PathLike)):  # e.g. a write() that ran out of space
        return DiskError(template.format(path="a file", blocker="a file", within="", as_file=""))
    path = Path(os.fsdecode(e.filename))
    blocker = _file_in_the_way(path)
    return DiskError(template.format(path=path, blocker=blocker,
                                     within=f" (on the way to {path})" if blocker != path else "",
                                     as_file=" as a file where a folder is needed" if path.is_file() else ""))
