"""Run a model-written Python program inside bubblewrap (an OS-level sandbox) and report how it ended.

    out = run_python("print(6 * 7)", timeout_s=5, memory_mb=256)
    out.status, out.stdout            # ("ok", "42\\n")

Program-of-thought and code checks (kdistill/data/cot.py) run what a teacher wrote. The program runs under
`bwrap` (Debian's `bubblewrap`, 0.8 or newer; kdistill/base/bwrap.py finds it and builds the command):

- new user, PID, IPC, network, UTS and cgroup namespaces: it runs as `nobody` with no capabilities, sees
  only its own processes (the parent and every host process are out of reach) and has no network (its
  own loopback only);
- a read-only view of the system directories and the Python installation, nothing else: no home folder,
  no run or output folder, no host /tmp, no /etc;
- one writable place, /sandbox (its working folder, HOME and TMPDIR), a fresh tmpfs of `disk_mb` that
  vanishes with it; /, /tmp and /dev are read-only;
- hard resource limits set inside, before the program's first line: address space (`memory_mb`), CPU
  seconds (a backstop for the wall-clock `timeout_s`), size of any file written (`output_bytes`, which
  also bounds stdout and stderr), processes and threads (`processes` besides its own), open files, no
  core dumps; `python -I -S -B`, so nothing of kdistill or its dependencies imports.

Nothing runs unconfined: where bwrap is missing or the kernel refuses user namespaces, `run_python` raises
`SandboxUnavailable` saying what to install (`require_sandbox()` checks this before any model loads).

Status: ok, error, timeout, memory, output_limit (a file or the tmpfs is full), or forbidden (the sandbox
refused it: a write to the read-only system, a link out of /sandbox, a process over the limit, the
network); `detail` says which.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass

from kdistill.base.bwrap import BOX, SandboxUnavailable, bwrap_command, find_bwrap, run_as

__all__ = ["Outcome", "SandboxUnavailable", "require_sandbox", "run_python"]

GUARD = r'''
import os, resource, sys
started, memory, cpu, fsize, extra = map(int, sys.argv[1:6])
mine = [p for p in os.listdir("/proc") if p.isdigit() and os.stat("/proc/" + p).st_uid == os.getuid()]
for kind, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_FSIZE, fsize),
                    (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0),
                    (resource.RLIMIT_NPROC, len(mine) + extra)):
    resource.setrlimit(kind, (value, value))
os.write(started, b"1")
os.close(started)
os.execv(sys.executable, [sys.executable, "-I", "-S", "-B", "main.py"])
'''

REFUSED = {  # errno of the program's last exception -> what the sandbox refused
    errno.EROFS: "write to the read-only system", errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted", errno.EXDEV: "link out of the sandbox",
    errno.EAGAIN: "process limit", errno.ENETUNREACH: "no network", errno.ECONNREFUSED: "no network",
    errno.EHOSTUNREACH: "no network", errno.EADDRNOTAVAIL: "no network",
    -2: "no network", -3: "no network", -5: "no network",  # getaddrinfo: EAI_NONAME, EAI_AGAIN, EAI_NODATA
}
FULL = {errno.EFBIG: "file size limit", errno.ENOSPC: "sandbox disk full"}
ERRNO = re.compile(r"\[Errno (-?\d+)\]")


def require_sandbox() -> str:
    """The bwrap that runs programs here; raises SandboxUnavailable (what to install) where none can."""
    return find_bwrap()


def _killed_by(rc: int | None) -> int | None:
    """The signal that ended the program: Popen reports -N for bwrap itself, bwrap 128+N for its child."""
    if rc is None:
        return None
    if rc < 0:
        return -rc
    return rc - 128 if 128 < rc < 160 else None


def _status(rc: int | None, timed_out: bool, stderr: str) -> tuple[str, str]:
    """(status, detail) of a finished program, from its exit and the last line of its traceback."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    last = lines[-1][:200] if lines else ""
    sig = _killed_by(rc)
    if timed_out or sig in (signal.SIGXCPU, signal.SIGKILL):
        return "timeout", ""
    if rc == 0:
        return "ok", ""
    if sig == signal.SIGXFSZ:
        return "output_limit", FULL[errno.EFBIG]
    if "MemoryError" in stderr[-2000:]:
        return "memory", ""
    if "can't start new thread" in last:
        return "forbidden", f"process limit: {last}"
    if "not allowed to raise maximum limit" in last:
        return "forbidden", f"resource limits are fixed: {last}"
    found = ERRNO.search(last)
    code = int(found.group(1)) if found else None
    if code in FULL:
        return "output_limit", FULL[code]
    if code in REFUSED:
        return "forbidden", f"{REFUSED[code]}: {last}"
    return "error", last or f"exit status {rc}"


@dataclass
class Outcome:
    """How a sandboxed program ended: ok, error, timeout, memory, output_limit or forbidden (see above)."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _memfd(name: str, data: bytes = b"") -> int:
    fd = os.memfd_create(name)  # close-on-exec; passed on only through pass_fds
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _kill_group(pid: int) -> None:
    """bwrap and the sandbox's init; the kernel then ends everything in the sandbox's PID namespace."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def run_python(code: str, timeout_s: float = 5.0, memory_mb: int = 512, output_bytes: int = 1 << 20,
               disk_mb: int = 64, processes: int = 0) -> Outcome:
    """Run `code` as a program in the sandbox (see the module docstring); never raises for the program.
    `processes`: how many processes or threads it may start besides itself (0: none)."""
    bwrap = find_bwrap()
    t0 = time.monotonic()
    source, out, err = _memfd("main.py", code.encode("utf-8")), _memfd("stdout"), _memfd("stderr")
    started_r, started_w = os.pipe()
    try:
        limits = [started_w, memory_mb << 20, int(timeout_s) + 1, output_bytes, processes]
        argv = bwrap_command(bwrap, disk_mb << 20, source, ["-c", GUARD, *map(str, limits)])
        env = {"PATH": "/usr/bin:/bin", "HOME": BOX, "TMPDIR": BOX, "LANG": "C.UTF-8"}
        timed_out = started = False
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                pass_fds=(source, started_w), start_new_session=True, **run_as())
        os.close(started_w)
        started_w = -1
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            if proc.returncode is None:  # not reaped yet, so its pid (and group) cannot be someone else's
                _kill_group(proc.pid)
                proc.wait()
        os.set_blocking(started_r, False)
        with contextlib.suppress(BlockingIOError):
            started = os.read(started_r, 1) == b"1"
        stdout, stderr = (os.pread(fd, output_bytes, 0).decode("utf-8", errors="replace") for fd in (out, err))
    finally:
        for fd in (source, out, err, started_r, started_w):
            if fd >= 0:
                os.close(fd)
    if not started and not timed_out:  # bwrap itself failed: not the program's doing
        raise SandboxUnavailable(f"bwrap ({bwrap}) could not start the sandbox: {stderr.strip()[:300]}")
    status, detail = _status(proc.returncode, timed_out, stderr)
    return Outcome(status, proc.returncode, stdout, stderr, time.monotonic() - t0, detail)
