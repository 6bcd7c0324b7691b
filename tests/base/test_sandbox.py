"""The sandbox runs honest programs and returns their output, holds each limit, and refuses to run anything
where bubblewrap cannot run (kdistill/base/sandbox.py, kdistill/base/bwrap.py).

Hostile programs trying to get out are in test_sandbox_escapes.py."""
import os
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from kdistill.base import bwrap
from kdistill.base.sandbox import SandboxUnavailable, require_sandbox, run_python
from kdistill.config.generation import CotConfig, GenerateConfig

try:
    require_sandbox()
    MISSING = ""
except SandboxUnavailable as e:
    MISSING = str(e)
needs_bwrap = pytest.mark.skipif(bool(MISSING), reason=f"no sandbox here (`make sandbox-tool`): {MISSING}")


@needs_bwrap
def test_an_honest_program_runs_and_prints():
    out = run_python("import math, collections, json, re, fractions\nprint(math.factorial(5))", timeout_s=5)
    assert out.ok and out.stdout.strip() == "120" and out.returncode == 0


@needs_bwrap
def test_its_own_folder_is_writable_and_holds_only_the_program():
    code = textwrap.dedent("""
        import os, sys, tempfile
        print(sorted(os.listdir('.')), os.getcwd(), os.environ['HOME'], tempfile.gettempdir())
        os.mkdir('d')
        with open('d/x.txt', 'w') as f:
            f.write('ok')
        with tempfile.NamedTemporaryFile() as f:
            f.write(b'ok')
        os.remove('d/x.txt')
        print(sys.stdin.read() == '', 'done')
    """)
    out = run_python(code, timeout_s=5)
    assert out.ok, out.stderr
    assert out.stdout.splitlines() == ["['main.py'] /sandbox /sandbox /sandbox", "True done"]


@needs_bwrap
def test_errors_are_reported_with_their_last_line():
    out = run_python("print('before')\nprint(1 / 0)", timeout_s=5)
    assert (out.status, out.detail, out.stdout) == ("error", "ZeroDivisionError: division by zero", "before\n")


@needs_bwrap
def test_nothing_of_the_project_or_its_dependencies_imports():
    for module in ("kdistill", "torch", "numpy"):
        out = run_python(f"import {module}", timeout_s=5)
        assert out.status == "error" and "ModuleNotFoundError" in out.stderr


@needs_bwrap
@pytest.mark.parametrize("code", ["while True:\n    pass", "import time\ntime.sleep(60)"])
def test_endless_programs_stop_at_the_time_limit(code):
    t0 = time.monotonic()
    out = run_python(code, timeout_s=1.0)
    assert out.status == "timeout" and time.monotonic() - t0 < 4


@needs_bwrap
def test_unbounded_allocation_stops_at_the_memory_limit():
    code = "chunks = []\nfor _ in range(64):\n    chunks.append(bytearray(64 << 20))\nprint('allocated 4 GB')"
    out = run_python(code, timeout_s=10, memory_mb=200)
    assert out.status == "memory" and "allocated" not in out.stdout


@needs_bwrap
def test_output_is_bounded():
    out = run_python("while True:\n    print('x' * 1000)", timeout_s=5, output_bytes=1 << 16)
    assert (out.status, out.detail) == ("output_limit", "file size limit") and len(out.stdout) <= 1 << 16


@needs_bwrap
@pytest.mark.parametrize("processes", [0, 2])
def test_processes_and_threads_stop_at_the_limit(processes):
    code = textwrap.dedent("""
        import os, threading, time
        started = 0
        try:
            for _ in range(20):
                if os.fork() == 0:
                    time.sleep(5)
                    os._exit(0)
                started += 1
        except OSError as e:
            print(started, type(e).__name__)
        try:
            threading.Thread(target=time.sleep, args=(1,)).start()
        except RuntimeError as e:
            print('no thread')
    """)
    out = run_python(code, timeout_s=5, processes=processes)
    assert out.ok and out.stdout.splitlines() == [f"{processes} BlockingIOError", "no thread"]
    fork = run_python("import os\nos.fork()\nprint('child')", timeout_s=5)
    assert fork.status == "forbidden" and fork.detail.startswith("process limit") and "child" not in fork.stdout


@needs_bwrap
def test_limits_cannot_be_raised_from_inside():
    out = run_python("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))", timeout_s=5)
    assert out.status == "forbidden" and out.detail.startswith("resource limits are fixed")


@needs_bwrap
def test_two_programs_run_at_once():  # kdistill/data/load.py checks with two threads
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(lambda i: run_python(f"print({i} * 7)", timeout_s=10), range(4)))
    assert [o.stdout.strip() for o in outs] == ["0", "7", "14", "21"]


# -- nothing runs unconfined --------------------------------------------------------------------------------

def _refusal(match):
    return pytest.raises(SandboxUnavailable, match=match)


def test_without_bwrap_programs_are_refused_with_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv(bwrap.ENV, str(tmp_path / "no-bwrap"))
    target = tmp_path / "ran.txt"
    hint = r"no-bwrap: not found.*apt-get install bubblewrap.*make sandbox-tool"
    with _refusal(hint):
        require_sandbox()
    with _refusal(hint):
        run_python(f"open({str(target)!r}, 'w').write('ran unconfined')", timeout_s=5)
    assert not target.exists()


def test_a_bwrap_that_cannot_make_namespaces_is_refused(monkeypatch):
    with tempfile.TemporaryDirectory() as folder:  # not under pytest's 0700 folder: root runs bwrap as nobody
        os.chmod(folder, 0o755)
        fake = Path(folder, "bwrap")  # what bwrap says where the kernel refuses user namespaces
        fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
        fake.chmod(0o755)
        monkeypatch.setenv(bwrap.ENV, str(fake))
        with _refusal(r"No permissions to create new namespace.*user namespaces"):
            run_python("print(1)", timeout_s=5)


def test_program_of_thought_and_code_checks_are_refused(tmp_path, monkeypatch):
    from kdistill.data.cot import check
    from kdistill.data.generation_inputs import check_generate_files

    monkeypatch.setenv(bwrap.ENV, str(tmp_path / "no-bwrap"))
    cfg = CotConfig(timeout_s=2.0, memory_mb=128)
    problem = {"question": "What is 6 times 7?", "answer": "42"}
    with _refusal("apt-get install bubblewrap"):
        check(problem, "```python\nprint(6 * 7)\n```", cfg, "program")
    assert check(problem, "6 * 7 = 42\nAnswer: 42", cfg, "rationale")[0] == "ok"  # no program: still runs
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"question": "What is 6 times 7?", "answer": "42"}\n')
    run = SimpleNamespace(data=SimpleNamespace(generate=GenerateConfig()))
    run.data.generate.cot = CotConfig(problems=str(problems), mode="program")
    with _refusal("apt-get install bubblewrap"):  # before any model loads (preflight)
        check_generate_files(run)
    run.data.generate.cot.mode = "rationale"
    check_generate_files(run)
