"""Each way out of the sandbox that a model-written program tried is contained, reported, and leaves the host
untouched (issue 37: hard link, directory fd, symlink, disk fill, fork bomb, socket, home, parent).

Each test would fail if the sandbox leaked: the host file would change or exist, the server would see a
connection, a process would outlive the run, the program would print what it should not see."""
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from kdistill.base.sandbox import SandboxUnavailable, require_sandbox, run_python

try:
    require_sandbox()
except SandboxUnavailable as e:
    pytest.skip(f"no sandbox here (`make sandbox-tool`): {e}", allow_module_level=True)

HOST_FILE = "/usr/bin/env"  # a host file every sandbox sees (read-only)


def _digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _run(code: str, **limits):
    return run_python(textwrap.dedent(code), **{"timeout_s": 10, **limits})


def test_a_hard_link_to_a_host_file_cannot_rewrite_it(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    before = _digest(HOST_FILE)
    linked = _run(f"""
        import os
        os.link({HOST_FILE!r}, 'env')
        open('env', 'ab').write(b'escaped')
    """)
    assert linked.status == "forbidden" and linked.detail.startswith("link out of the sandbox")
    direct = _run(f"open({HOST_FILE!r}, 'ab').write(b'escaped')")
    assert direct.status == "forbidden" and direct.detail.startswith(("write to the read-only", "permission denied"))
    hidden = _run(f"import os\nos.link({str(precious)!r}, 'p')\nopen('p', 'w').write('escaped')")
    assert hidden.status == "error" and "FileNotFoundError" in hidden.detail
    assert _digest(HOST_FILE) == before and precious.read_text() == "mine"


def test_directory_fds_lead_nowhere_writable(tmp_path):
    host_dir = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)  # an fd opened before the program started
    os.set_inheritable(host_dir, True)
    try:
        inherited = _run(f"""
            import os
            print(sorted(os.listdir('/proc/self/fd')))
            os.open('escaped.txt', os.O_CREAT | os.O_WRONLY, dir_fd={host_dir})
        """)
    finally:
        os.close(host_dir)
    assert inherited.stdout.strip() == "['0', '1', '2', '3']"  # 3: listdir's own; nothing of the parent
    assert inherited.status == "error" and "Bad file descriptor" in inherited.detail
    for start in ("/", "/sandbox/..", "/usr", "/tmp", "/dev/shm", "/proc/1/root"):
        out = _run(f"""
            import os
            fd = os.open({start!r}, os.O_RDONLY | os.O_DIRECTORY)
            os.open('escaped.txt', os.O_CREAT | os.O_WRONLY, dir_fd=fd)
        """)
        assert out.status in ("forbidden", "error") and out.returncode != 0, (start, out.stderr)
    assert not (tmp_path / "escaped.txt").exists() and not Path("/escaped.txt").exists()


def test_symlinks_out_reach_nothing_of_the_host(tmp_path):
    target = tmp_path / "outside.txt"
    into_host = _run(f"""
        import os
        os.symlink({str(tmp_path)!r}, 'link')
        open('link/outside.txt', 'w').write('escaped')
    """)
    assert into_host.status == "error" and "FileNotFoundError" in into_host.detail
    into_system = _run("import os\nos.symlink('/usr/bin', 'bin')\nopen('bin/escaped', 'w').write('escaped')")
    assert into_system.status == "forbidden" and "Read-only file system" in into_system.detail
    recreated = _run(f"""
        import os
        os.makedirs({str(tmp_path)!r})  # fails: outside /sandbox everything is read-only
    """)
    assert recreated.status == "forbidden" and not target.exists() and not Path("/usr/bin/escaped").exists()


def test_filling_the_disk_stops_at_the_sandbox_size():
    many_files = _run("""
        import os
        written = 0
        try:
            while True:
                with open(f'f{written}', 'wb') as f:
                    f.write(b'x' * (256 << 10))
                written += 1
        finally:
            print(written * 256 << 10)
    """, disk_mb=8)
    assert many_files.status == "output_limit" and many_files.detail == "sandbox disk full"
    assert int(many_files.stdout) <= 8 << 20
    one_file = _run("open('big', 'wb').write(b'x' * (8 << 20))", output_bytes=1 << 20)
    assert one_file.status == "output_limit" and one_file.detail == "file size limit"
    elsewhere = [_run(f"open({p!r}, 'wb').write(b'x')") for p in ("/tmp/fill", "/dev/shm/fill", "/fill")]
    assert [o.status for o in elsewhere] == ["forbidden"] * 3  # the one writable place is /sandbox


def _processes_with(token: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if token.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            pass
    return found


def test_a_fork_bomb_stops_at_the_process_limit_and_leaves_nothing_behind():
    bomb = _run("import os\nwhile True:\n    os.fork()")
    assert bomb.status == "forbidden" and bomb.detail.startswith("process limit")
    token = f"kdistill-bomb-{uuid.uuid4().hex}"
    stubborn = _run(f"""
        import os, sys
        while True:
            try:
                if os.fork() == 0:
                    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {token!r}])
            except OSError:
                pass
    """, timeout_s=2, processes=4)
    assert stubborn.status == "timeout"
    deadline = time.monotonic() + 5
    while _processes_with(token) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_with(token) == []


def test_sockets_reach_no_network():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    abstract = socket.socket(socket.AF_UNIX)
    name = f"\0kdistill-{uuid.uuid4().hex}"
    abstract.bind(name)
    abstract.listen(1)
    abstract.setblocking(False)
    try:
        for connect in (f"socket.create_connection(('127.0.0.1', {server.getsockname()[1]}), timeout=2)",
                        "socket.create_connection(('deb.debian.org', 80), timeout=2)",
                        f"s = socket.socket(socket.AF_UNIX)\ns.connect({name!r})"):
            out = _run(f"import socket\n{connect}\nprint('connected')")
            assert out.status == "forbidden" and out.detail.startswith("no network"), out.stderr
            assert "connected" not in out.stdout
        for listening in (server, abstract):
            with pytest.raises(BlockingIOError):
                listening.accept()
    finally:
        server.close()
        abstract.close()


def test_the_home_the_run_folder_and_the_environment_are_not_visible(tmp_path, monkeypatch):
    monkeypatch.setenv("KDISTILL_TEST_SECRET", "s3cret")
    secret = tmp_path / "runs" / "r1" / "config.yaml"
    secret.parent.mkdir(parents=True)
    secret.write_text("secret: 1")
    home, project = Path.home(), Path(__file__).resolve().parents[2]
    venv = [sys.prefix] if sys.prefix != sys.base_prefix else []  # kdistill's environment and its packages
    probes = [str(secret), str(project / "pyproject.toml"), str(home), *venv]
    out = _run(f"""
        import json, os
        seen = {{}}
        for path in {probes!r}:
            try:
                seen[path] = sorted(os.listdir(path)) if os.path.isdir(path) else open(path).read()
            except OSError as e:
                seen[path] = type(e).__name__
        print(json.dumps([seen, dict(os.environ)]))
    """)
    seen, env = json.loads(out.stdout)
    assert seen[str(secret)] == "FileNotFoundError" and seen[str(project / "pyproject.toml")] == "FileNotFoundError"
    assert all(seen[v] == "FileNotFoundError" for v in venv)
    interpreter_dirs = {p.relative_to(home).parts[0] for p in map(Path, (sys.base_prefix, sys.base_exec_prefix))
                        if p.is_relative_to(home) and p != home}
    assert seen[str(home)] == "FileNotFoundError" or set(seen[str(home)]) <= interpreter_dirs
    assert set(env) <= {"HOME", "LANG", "PATH", "PWD", "TMPDIR"} and env["HOME"] == "/sandbox"  # no secret


def test_the_parent_and_the_host_processes_are_out_of_reach():
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        out = _run(f"""
            import os, signal
            visible = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
            print(os.getppid(), visible)
            os.kill(os.getppid(), signal.SIGKILL)    # the sandbox's own init: ignored
            try:
                os.kill(-1, signal.SIGKILL)          # everything it can see but itself and init: nothing
            except ProcessLookupError:
                pass
            print('still here')
            os.kill({sleeper.pid}, signal.SIGKILL)   # a host process by its host pid
        """)
        first, second = out.stdout.splitlines()[:2]
        assert first == "1 [1, 2]" and second == "still here"
        assert out.status == "error" and "ProcessLookupError" in out.detail
        killer = _run(f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)")  # this test process
        assert killer.status == "error" and "ProcessLookupError" in killer.detail
        assert sleeper.poll() is None
    finally:
        sleeper.send_signal(signal.SIGKILL)
        sleeper.wait()


def test_no_new_namespaces_to_get_around_the_limits():
    out = _run("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        for flag in (0x10000000, 0x00020000, 0x40000000):   # CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET
            print(libc.unshare(flag), os.strerror(ctypes.get_errno()))
    """)
    assert out.ok and all(line.startswith("-1 ") for line in out.stdout.splitlines()), out.stdout
