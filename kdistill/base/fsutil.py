"""Atomic writes, their leftovers, and one run per output folder.

Files are written to a temporary name in the same folder and renamed into place; folders are built
under a temporary name and renamed, so a kill at any moment leaves either the old or the new version.
A kill leaves at most `.NAME.<8 random characters>.tmp` (a half-built file or folder) and, while a folder is being
replaced, `.NAME.old` (its previous version); `clean_partial` removes them (or puts `.NAME.old` back
when NAME itself is gone). `run_lock` holds `OUTPUT_DIR/.kdistill.lock` for the length of a run.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

from kdistill.base.errors import KdistillError

log = logging.getLogger("kdistill")
LOCK_NAME = ".kdistill.lock"
PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?:[A-Za-z0-9_]{8}\.tmp|old)$")  # mkstemp/mkdtemp use 8 chars


def _umask_mode(base: int) -> int:
    """`base` (0o666 files, 0o777 folders) less the process umask, as open()/mkdir() would give."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` under a temporary name in the same folder, fsync, rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, _umask_mode(0o666))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename into it) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temporary folder beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    os.chmod(tmp, _umask_mode(0o777))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one JSON row and flush it to disk (a kill loses at most the row being written)."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike, fix: str, check=None) -> tuple[list[dict], int | None]:
    """The rows `append_jsonl` wrote to `path` ([] if it is missing) and the number of a last line that a
    kill cut short while it was written (dropped; None if there is none). Any other line that is not one
    JSON object, or whose row `check(row)` finds a problem in (it returns the words, or None), is a
    DataError "PATH, line N: what is wrong; `fix`"."""
    from kdistill.base.errors import DataError

    path = Path(path)
    if not path.is_file():
        return [], None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 at byte {e.start}; {fix}") from None
    last = max((i for i, line in enumerate(lines, 1) if line.strip()), default=0)
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if i == last:
                return rows, i
            raise DataError(f"{path}, line {i}: not valid JSON ({e.msg}); {fix}") from None
        if not isinstance(row, dict):
            if i == last:
                return rows, i
            raise DataError(f"{path}, line {i}: a JSON {type(row).__name__}, not an object; {fix}")
        problem = check(row) if check else None
        if problem:
            raise DataError(f"{path}, line {i}: {problem}; {fix}")
        rows.append(row)
    return rows, None


def sha256_file(path: str | os.PathLike, fsync: bool = False) -> str:
    """The file's sha256 (hex); with `fsync`, also flush it to disk (a checkpoint survives power loss)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
        if fsync:
            os.fsync(f.fileno())
    return digest.hexdigest()


def clean_partial(folder: str | os.PathLike, only=None) -> list[Path]:
    """Remove what a killed atomic write left directly in `folder` (of the names in `only`, when given: what
    the caller writes there); returns the removed paths.

    `.NAME.old` whose NAME is missing is the complete previous version of a folder killed mid-replace:
    it is renamed back to NAME (logged), not removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in sorted(folder.iterdir()):
        m = PARTIAL.match(p.name)
        is_old = p.name.endswith(".old")
        if m is None or (is_old and (p.is_symlink() or not p.is_dir())):  # atomic_dir's .old is a folder
            continue
        if only is not None and m["name"] not in only:
            continue
        if is_old and not (folder / m["name"]).exists():
            os.replace(p, folder / m["name"])
            log.warning("restored %s from %s, the previous version left by a killed write", m["name"], p)
            continue
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        removed.append(p)
    return removed


def _read_holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    try:
        return json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another kdistill process (just starting)"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    host = f" on {holder['host']}" if holder.get("host") and holder["host"] != socket.gethostname() else ""
    return f"kdistill process {holder.get('pid', '?')}{host} (started {started})"


def _acquire(path: Path, output_dir: Path) -> int:
    """An fd of `path` holding an exclusive flock; the file at `path` is the one locked."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _umask_mode(0o666))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_holder(fd)
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise KdistillError(f"output_dir {output_dir} is in use by {_describe(holder)}; wait for it or "
                                "choose another output_dir") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed the file as we opened it: lock the new one


@contextlib.contextmanager
def run_lock(output_dir: str | os.PathLike):
    """Hold OUTPUT_DIR/.kdistill.lock (pid, host, start time) for the body; refuse a folder in use.

    An flock, not an O_EXCL file: the kernel releases it when the holder dies, even by kill -9, so a
    lock is never stale and a reused pid cannot fake a live holder. A file left by a dead holder is taken
    over with a warning. Locks are per open file, so a second `run_lock` in the same process is refused
    too. The file is removed on release while still locked; `_acquire` re-checks the inode for that race.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / LOCK_NAME
    fd = _acquire(path, output_dir)
    try:
        left = _read_holder(fd)
        if left:
            log.warning("output_dir %s: taking over the lock left by %s, which is no longer running",
                        output_dir, _describe(left))
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode("utf-8") + b"\n", 0)
        os.fsync(fd)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def cache_root() -> Path:
    """kdistill's cache: $KDISTILL_CACHE, default ~/.cache/kdistill (teachers, generated data, kernels)."""
    return Path(os.environ.get("KDISTILL_CACHE", Path.home() / ".cache" / "kdistill"))


@contextlib.contextmanager
def waiting_lock(path: str | os.PathLike, what: str):
    """Hold an exclusive flock on `path` (created if missing, never removed) for the body, waiting for
    another holder instead of refusing: two runs that would write the same cache (teacher-written data)
    take turns, and the second finds the first's result. `what` words the wait in the log."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _umask_mode(0o666))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            log.info("waiting for another kdistill process %s (%s)", what, path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


_OS_ERROR = re.compile(r"os error (\d+)|No space left on device")


@contextlib.contextmanager
def writing(path: str | os.PathLike):
    """Name `path` in a disk error raised while writing it: an OSError without a file name (a write()
    that ran out of space), and safetensors' or torch's wrapped I/O errors ("... (os error 28)"), become
    the DiskError that `errors.disk_error` words for that errno."""
    from kdistill.base.errors import disk_error

    try:
        yield
    except OSError as e:
        found = disk_error(OSError(e.errno, e.strerror, e.filename or os.fspath(path)))
        if found is None:
            raise
        raise found from e
    except Exception as e:  # SafetensorError, RuntimeError("... file write failed")
        m = _OS_ERROR.search(str(e))
        code = (int(m.group(1)) if m.group(1) else errno.ENOSPC) if m else None
        found = disk_error(OSError(code, os.strerror(code), os.fspath(path))) if code else None
        if found is None:
            raise
        raise found from e
