"""The sandbox stops each hostile program within its limits, and lets an honest one run.

Each test would fail if the guard did not hold: the file outside would exist, the child would print,
the server would see a connection, the loop would run past the limit."""
import socket
import textwrap
import time

import pytest

from kdistill.base.sandbox import run_python


def test_an_honest_program_runs_and_prints():
    out = run_python("import math, collections, json\nprint(math.factorial(5))", timeout_s=5)
    assert out.ok and out.stdout.strip() == "120"


@pytest.mark.parametrize("code", ["while True:\n    pass", "import time\ntime.sleep(60)"])
def test_endless_programs_stop_at_the_time_limit(code):
    t0 = time.monotonic()
    out = run_python(code, timeout_s=1.0)
    assert out.status == "timeout" and time.monotonic() - t0 < 4


def test_unbounded_allocation_stops_at_the_memory_limit():
    code = "chunks = []\nfor _ in range(64):\n    chunks.append(bytearray(64 << 20))\nprint('allocated 4 GB')"
    out = run_python(code, timeout_s=10, memory_mb=200)
    assert out.status == "memory" and "allocated" not in out.stdout


@pytest.mark.parametrize("code", [
    "import os\nwhile True:\n    if os.fork() == 0:\n        print('child')",
    "import os\ntry:\n    os.fork()\nexcept BaseException:\n    pass\nprint('child')",   # catching does not help
    "import subprocess\nprint(subprocess.run(['echo', 'child'], capture_output=True).stdout)",
    "import os\nos.system('echo child')",
    "import os\nos.posix_spawn('/bin/echo', ['echo', 'child'], {})",
    "import multiprocessing as mp\np = mp.Process(target=print, args=('child',))\np.start()\np.join()",
    "import ctypes\nctypes.CDLL(None).fork()\nprint('child')",
])
def test_processes_cannot_be_started(code):
    out = run_python(code, timeout_s=5)
    assert out.status == "forbidden" and "child" not in out.stdout


@pytest.mark.parametrize("template", [
    "open({path!r}, 'w').write('escaped')",
    "import os\nfd = os.open({path!r}, os.O_WRONLY | os.O_CREAT)\nos.write(fd, b'escaped')",
    "import shutil\nopen('mine.txt', 'w').write('escaped')\nshutil.copy('mine.txt', {path!r})",
    "import os\nopen('mine.txt', 'w').write('escaped')\nos.rename('mine.txt', {path!r})",
    "import os\nos.symlink({folder!r}, 'link')\nopen('link/outside.txt', 'w').write('escaped')",
    "import pathlib\npathlib.Path({path!r}).write_text('escaped')",
])
def test_writes_outside_the_folder_are_refused(tmp_path, template):
    target = tmp_path / "outside.txt"
    out = run_python(template.format(path=str(target), folder=str(tmp_path)), timeout_s=5)
    assert out.status == "forbidden" and not target.exists()


def test_removing_outside_the_folder_is_refused(tmp_path):
    keep = tmp_path / "precious.txt"
    keep.write_text("mine")
    out = run_python(f"import os\nos.remove({str(keep)!r})", timeout_s=5)
    assert out.status == "forbidden" and keep.read_text() == "mine"


def test_its_own_folder_is_writable_and_empty():
    code = textwrap.dedent("""
        import os
        print(sorted(os.listdir('.')))
        os.mkdir('d')
        with open('d/x.txt', 'w') as f:
            f.write('ok')
        os.remove('d/x.txt')
        print('done')
    """)
    out = run_python(code, timeout_s=5)
    assert out.ok and out.stdout.split("\n")[:2] == ["['main.py']", "done"]


def test_sockets_cannot_be_opened():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        out = run_python(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                         "s.sendall(b'hello')\nprint('connected')", timeout_s=5)
        assert out.status == "forbidden" and "connected" not in out.stdout
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()


def test_nothing_of_the_project_or_its_dependencies_imports():
    for module in ("kdistill", "torch", "numpy"):
        out = run_python(f"import {module}", timeout_s=5)
        assert out.status == "error" and "ModuleNotFoundError" in out.stderr


@pytest.mark.parametrize("code", [
    "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))",    # raising its own limits
    "import os\nos.kill(os.getppid(), 9)",                                   # signalling the parent
])
def test_the_limits_and_the_parent_are_out_of_reach(code):
    assert run_python(code, timeout_s=5).status == "forbidden"


def test_output_is_bounded():
    out = run_python("while True:\n    print('x' * 1000)", timeout_s=5, output_bytes=1 << 16)
    assert out.status == "output_limit" and len(out.stdout) <= 1 << 16
