"""Find a working bubblewrap (`bwrap`) and build the command that runs Python inside it (see sandbox.py).

Where bwrap is looked for: $KDISTILL_BWRAP if set (and nowhere else then), else `bwrap` on PATH, else
.tools/bwrap-root/usr/bin/bwrap in the project (what `make sandbox-tool` unpacks, no root needed). A
candidate counts only once it has run a program in the exact sandbox kdistill uses, so an old bwrap
(before 0.8 there is no `--size`) or a kernel that refuses user namespaces reads as unavailable.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from kdistill.base.errors import KdistillError

ENV = "KDISTILL_BWRAP"
LOCAL = Path(__file__).resolve().parents[2] / ".tools" / "bwrap-root" / "usr" / "bin" / "bwrap"
BOX = "/sandbox"  # the one writable folder inside: a fresh tmpfs
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
NOBODY = "65534"
SYSTEM_PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3")
HOW = ("program-of-thought and code checks run model-written programs only inside bubblewrap (bwrap 0.8 or "
       "newer), and it cannot run here ({reasons}). Install it: `apt-get install bubblewrap` (as root), or "
       "`make sandbox-tool` (unpacks Debian's package into .tools/, no root needed), or set KDISTILL_BWRAP "
       "to a bwrap binary. Where bwrap is installed but refused, the kernel forbids unprivileged user "
       "namespaces: allow them (sysctl kernel.unprivileged_userns_clone=1; on Ubuntu "
       "kernel.apparmor_restrict_unprivileged_userns=0)")


class SandboxUnavailable(KdistillError):
    """No OS-level sandbox can run here, so model-written programs are not run at all."""


def _inside(path: str, tops) -> bool:
    return any(path == top or path.startswith(top + "/") for top in tops)


def _system() -> list[str]:
    """Read-only binds of the system directories (merged-/usr symlinks kept as symlinks)."""
    args = []
    for top in SYSTEM:
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    return args


def _python() -> tuple[str, list[str]]:
    """The interpreter run inside and the binds it needs: this one if it lives in the system directories,
    else the system's python3, else this one with its installation bound (never a venv: its
    site-packages hold kdistill)."""
    base = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    for exe in (base, *(os.path.realpath(p) for p in SYSTEM_PYTHONS if os.path.isfile(p))):
        if _inside(exe, SYSTEM):
            return exe, []
    prefixes = sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)} - {"/"})
    binds = []
    for i, prefix in enumerate(prefixes):
        if not _inside(prefix, [*SYSTEM, *prefixes[:i]]):
            binds += ["--ro-bind", prefix, prefix]
    if not _inside(base, [*SYSTEM, *prefixes]):
        binds += ["--ro-bind", base, base]
    return base, binds


def run_as() -> dict:
    """Popen arguments for bwrap: as root, it runs as nobody, so the sandbox is unprivileged on the host
    too and the kernel applies RLIMIT_NPROC (it exempts root); otherwise as the user."""
    return {"user": int(NOBODY), "group": int(NOBODY), "extra_groups": []} if os.geteuid() == 0 else {}


def bwrap_command(bwrap: str, disk_bytes: int, source_fd: int, python_args: list[str]) -> list[str]:
    """argv running `python -I -S -B *python_args` in /sandbox, with main.py read from `source_fd`."""
    exe, python_binds = _python()
    return [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--uid", NOBODY, "--gid", NOBODY,
            "--cap-drop", "ALL", "--hostname", "sandbox", "--die-with-parent", "--new-session",
            *_system(), *python_binds,
            "--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev", "--dir", "/tmp",
            "--size", str(disk_bytes), "--tmpfs", BOX, "--file", str(source_fd), f"{BOX}/main.py",
            "--chdir", BOX, "--remount-ro", "/",
            exe, "-I", "-S", "-B", *python_args]


def _candidates() -> list[str]:
    if os.environ.get(ENV):
        return [os.environ[ENV]]
    found = [shutil.which("bwrap"), str(LOCAL)]
    return [c for i, c in enumerate(found) if c and c not in found[:i]]


_working: set[str] = set()  # only successes are remembered: `make sandbox-tool` may run while we do


def _probe(bwrap: str) -> str | None:
    """None where `bwrap` runs a program in the sandbox, else why not."""
    if not (os.path.isfile(bwrap) and os.access(bwrap, os.X_OK)):
        return "not found"
    fd = os.memfd_create("main.py")
    try:
        argv = bwrap_command(bwrap, 1 << 20, fd, ["-c", "print('ok')"])
        done = subprocess.run(argv, check=False, pass_fds=(fd,), stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=60, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, **run_as())
    except (OSError, subprocess.SubprocessError) as e:
        return _as_root(str(e))
    finally:
        os.close(fd)
    if done.returncode == 0 and done.stdout == b"ok\n":
        return None
    said = done.stderr.decode("utf-8", errors="replace").strip().splitlines()
    return _as_root(said[-1][:200] if said else f"exit status {done.returncode}")


def _as_root(reason: str) -> str:
    if "Permission denied" not in reason or not run_as():
        return reason
    return (f"{reason}; as root, bwrap runs as nobody (uid 65534), who must be able to reach bwrap and a "
            "python3 (install Debian's: apt-get install python3-minimal)")


def find_bwrap() -> str:
    """The first candidate that works; raises SandboxUnavailable (saying what to install) where none does."""
    reasons = []
    for bwrap in _candidates():
        if bwrap in _working:
            return bwrap
        reason = _probe(bwrap)
        if reason is None:
            _working.add(bwrap)
            return bwrap
        reasons.append(f"{bwrap}: {reason}")
    raise SandboxUnavailable(HOW.format(reasons="; ".join(reasons)))
