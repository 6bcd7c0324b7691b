"""Writing export outputs atomically: a file appears under its name only when it is complete.

`kdistill.base.fsutil` covers text files and folders; `atomic_file` is for writers that open a path
themselves (the gguf package's `GGUFWriter`).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def default_mode(path: Path) -> None:
    """Give a file made by mkstemp/mkdtemp (0600/0700) the mode a plain open() would, under the umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_file(path: Path):
    """Yield a temporary path beside `path`; on success it is fsynced and renamed to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        default_mode(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
