"""Run a teacher-written Python program in a separate, limited process and report how it ended.

    out = run_python("print(6 * 7)", timeout_s=5, memory_mb=256)
    out.status, out.stdout            # ("ok", "42\\n")

The program runs as `python -I -S -B` (isolated: no site-packages, no PYTHON* variables, no user or
project folder on sys.path, so nothing of kdistill or its dependencies can be imported) in an empty
temporary folder that is deleted afterwards, with an environment of PATH, HOME and TMPDIR only. Before
the program's first line, a guard in the child:

- sets hard resource limits: address space (`memory_mb`), CPU seconds (a backstop for the wall-clock
  `timeout_s`), size of any file written (`output_bytes`, which also bounds stdout and stderr, since they
  go to files), open files, no core dumps;
- installs an audit hook (PEP 578) that ends the program at once with status "forbidden" when it forks,
  spawns or execs a process, opens or uses a socket, signals another process, loads C code through
  ctypes, raises its own resource limits, replaces a function's code, or writes, creates, renames or
  deletes anything outside its folder (reads are allowed: the standard library must be read).

The parent adds a network namespace with no interfaces (`unshare -n`, where the kernel allows it) and, at
the end, kills the program's whole process group. The limits are set by the child itself, not in a
`preexec_fn`, which is unsafe in a parent that runs threads (torch does).

This stops the mistakes and casual hostility of generated code (an endless loop, a memory bomb, a fork
bomb, `rm -rf`, a download); it is not a security boundary against code written to escape a CPython audit
hook. Run untrusted code at scale in a container or VM.
"""
from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

FORBIDDEN_EXIT = 113
MARK = "kdistill-sandbox: refused "

GUARD = r'''
import os, resource, sys

def _limit(memory, cpu, fsize):
    for kind, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_CPU, cpu),
                        (resource.RLIMIT_FSIZE, fsize), (resource.RLIMIT_NOFILE, 64),
                        (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(kind, (value, value))

def _hook_for(root):
    W = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    DENY = ("os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec", "os.system", "os.kill",
            "os.killpg", "subprocess.Popen", "pty.spawn", "signal.pthread_kill", "resource.setrlimit",
            "resource.prlimit", "ctypes.", "socket.", "_winapi.", "os.startfile")
    IMPORTS = ("ctypes", "_ctypes", "_posixsubprocess")
    PATHS = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.chmod": (0,), "os.chown": (0,),
             "os.rename": (0, 1), "os.link": (1,), "os.symlink": (1,), "os.truncate": (0,), "os.utime": (0,),
             "os.setxattr": (0,), "os.removexattr": (0,), "os.chflags": (0,), "os.lchflags": (0,),
             "shutil.rmtree": (0,), "os.mkfifo": (0,), "os.mknod": (0,)}
    DIR_FD = {"os.remove": 1, "os.rmdir": 1, "os.mkdir": 2, "os.chmod": 2, "os.chown": 3, "os.rename": 2,
              "os.link": 2, "os.symlink": 2, "os.utime": 3, "shutil.rmtree": 1}
    write, exit_, fsdecode, realpath, sep = os.write, os._exit, os.fsdecode, os.path.realpath, os.sep

    def refuse(event, detail=""):
        write(2, ("\n" + %(mark)r + event + (" " + detail if detail else "") + "\n").encode())
        exit_(%(code)d)

    def inside(path):
        if isinstance(path, int):
            return True  # an open descriptor: it was checked when it was opened
        if not isinstance(path, (str, bytes)):
            return False
        p = realpath(fsdecode(path))
        return p == root or p.startswith(root + sep) or p == "/dev/null"

    def hook(event, args):
        if event.startswith(DENY):
            refuse(event)
        if event == "import" and args and (args[0] in IMPORTS or str(args[0]).startswith("ctypes.")):
            refuse(event, str(args[0]))
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(flags, int) and flags & W) or (isinstance(mode, str) and any(c in mode for c in "wax+"))
            if writing and not inside(path):
                refuse("write outside the sandbox folder", str(path) if isinstance(path, (str, bytes)) else "")
        elif event in PATHS:
            at = DIR_FD.get(event)
            if at is not None and len(args) > at and args[at] not in (None, -1):
                refuse(event, "with dir_fd")
            for i in PATHS[event]:
                if not inside(args[i]):
                    refuse(event + " outside the sandbox folder", str(args[i]))
        elif event == "object.__setattr__" and args[1] == "__code__" and type(args[0]).__name__ == "function":
            refuse(event, args[1])
    return hook

def _main():
    root = os.path.realpath(os.getcwd())
    with open("main.py", encoding="utf-8") as f:
        source = f.read()
    code = compile(source, "main.py", "exec")
    _limit(*map(int, sys.argv[1:4]))
    sys.argv = ["main.py"]
    sys.addaudithook(_hook_for(root))
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})

_main()
''' % {"mark": MARK, "code": FORBIDDEN_EXIT}


@functools.lru_cache(maxsize=None)
def network_prefix() -> tuple[str, ...]:
    """("unshare", "-n") where a new, empty network namespace can be made here; else () (the hook alone)."""
    try:
        ok = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return ("unshare", "-n") if ok else ()


def _read(path: Path, limit: int) -> str:
    with open(path, "rb") as f:
        return f.read(limit).decode("utf-8", errors="replace")


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _status(rc: int | None, timed_out: bool, stderr: str) -> tuple[str, str]:
    """(status, detail) of a finished program."""
    if timed_out or rc in (-signal.SIGXCPU, -signal.SIGKILL):
        return "timeout", ""
    if rc == FORBIDDEN_EXIT and MARK in stderr:
        return "forbidden", stderr.rsplit(MARK, 1)[1].strip()
    if rc == -signal.SIGXFSZ or "[Errno 27] File too large" in stderr[-2000:]:
        return "output_limit", ""
    if rc != 0 and "MemoryError" in stderr[-2000:]:
        return "memory", ""
    if rc != 0:
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        return "error", lines[-1][:200] if lines else f"exit status {rc}"
    return "ok", ""


@dataclass
class Outcome:
    """How a sandboxed program ended: status is ok, error, timeout, memory, forbidden or output_limit."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def run_python(code: str, timeout_s: float = 5.0, memory_mb: int = 512, output_bytes: int = 1 << 20) -> Outcome:
    """Run `code` as a program in the sandbox (see the module docstring); never raises for the program."""
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kdistill-box-") as box, \
            tempfile.TemporaryDirectory(prefix="kdistill-box-io-") as io_dir:
        Path(box, "main.py").write_text(code, encoding="utf-8")
        out, err = Path(io_dir, "stdout"), Path(io_dir, "stderr")
        limits = [str(memory_mb << 20), str(int(timeout_s) + 1), str(output_bytes)]
        argv = [*network_prefix(), sys.executable, "-I", "-S", "-B", "-c", GUARD, *limits]
        env = {"PATH": "/usr/bin:/bin", "HOME": box, "TMPDIR": box, "LANG": "C.UTF-8"}
        timed_out = False
        with open(out, "wb") as fo, open(err, "wb") as fe:
            proc = subprocess.Popen(argv, cwd=box, env=env, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe,
                                    start_new_session=True, close_fds=True)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(proc.pid)  # also whatever it started, should anything have got through
                proc.wait()
        stdout, stderr = _read(out, output_bytes), _read(err, output_bytes)
    status, detail = _status(proc.returncode, timed_out, stderr)
    return Outcome(status, proc.returncode, stdout, stderr, time.monotonic() - t0, detail)
