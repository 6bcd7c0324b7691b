"""Atomic writes leave the old version or the new one, never a half-written file, with normal modes;
their leftovers are cleaned; one run holds an output folder at a time, and a dead one's lock is taken over."""
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kdistill.base import fsutil
from kdistill.base.errors import KdistillError


def test_write_text_replaces_atomically_with_umask_mode(tmp_path):
    f = tmp_path / "a.json"
    fsutil.write_json(f, {"x": 1})
    assert f.read_text().strip().startswith("{")
    mask = os.umask(0)
    os.umask(mask)
    assert f.stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_dir_keeps_old_version_on_failure(tmp_path):
    target = tmp_path / "student"
    with fsutil.atomic_dir(target) as tmp:
        (tmp / "w").write_text("v1")
    with pytest.raises(RuntimeError):
        with fsutil.atomic_dir(target) as tmp:
            (tmp / "w").write_text("v2")
            raise RuntimeError("killed")
    assert (target / "w").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]
    with fsutil.atomic_dir(target) as tmp:
        (tmp / "w").write_text("v3")
    assert (target / "w").read_text() == "v3"


ROOT = Path(__file__).parents[2]
HOLD = """
import sys, time, types
pkg = types.ModuleType("kdistill")  # fsutil alone, without the package's transformers import
pkg.__path__ = [sys.argv[3]]
sys.modules["kdistill"] = pkg
from kdistill.base import fsutil
if sys.argv[1] == "lock":
    with fsutil.run_lock(sys.argv[2]):
        print("held", flush=True)
        time.sleep(120)
with fsutil.atomic_dir(sys.argv[2]) as tmp:
    (tmp / "half").write_text("x")
    print("held", flush=True)
    time.sleep(120)
"""


def _hold(kind: str, path) -> subprocess.Popen:
    """A process that takes the lock of / starts an atomic write to `path`, then sleeps."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, kind, str(path), str(ROOT / "kdistill")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    assert line == "held\n", line + proc.stdout.read()
    return proc


def _kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_run_lock_refuses_a_live_holder_and_takes_over_from_a_dead_one(tmp_path, caplog):
    out = tmp_path / "runs" / "x"
    holder = _hold("lock", out)
    try:
        written = json.loads((out / fsutil.LOCK_NAME).read_text())
        assert written["pid"] == holder.pid and written["host"] and written["started"] > 0
        with pytest.raises(KdistillError, match=rf"output_dir {out} is in use by kdistill process {holder.pid} "
                                                r"\(started .*\); wait for it or choose another output_dir"):
            with fsutil.run_lock(out):
                pass
    finally:
        _kill9(holder)
    assert (out / fsutil.LOCK_NAME).exists()  # kill -9 left the file; the kernel dropped the lock
    with caplog.at_level(logging.WARNING, logger="kdistill"):
        with fsutil.run_lock(out) as path:
            assert json.loads(path.read_text())["pid"] == os.getpid()
            with pytest.raises(KdistillError, match=f"in use by kdistill process {os.getpid()}"):
                with fsutil.run_lock(out):  # a second run in the same process is refused too
                    pass
    assert f"taking over the lock left by kdistill process {holder.pid}" in caplog.text
    assert not (out / fsutil.LOCK_NAME).exists()
    with fsutil.run_lock(out):  # released cleanly: no warning, and free again
        pass


def test_clean_partial_removes_what_a_killed_atomic_dir_left(tmp_path):
    target = tmp_path / "student"
    with fsutil.atomic_dir(target) as tmp:
        (tmp / "w").write_text("v1")
    _kill9(_hold("write", target))
    left = [p.name for p in tmp_path.iterdir() if p.name != "student"]
    assert len(left) == 1 and fsutil.PARTIAL.match(left[0]), left
    assert [p.name for p in fsutil.clean_partial(tmp_path)] == left
    assert [p.name for p in tmp_path.iterdir()] == ["student"] and (target / "w").read_text() == "v1"


def test_sha256_file(tmp_path):
    import hashlib

    f = tmp_path / "f"
    f.write_bytes(b"x" * (3 << 20))
    assert fsutil.sha256_file(f, fsync=True) == hashlib.sha256(f.read_bytes()).hexdigest()


def test_read_jsonl_drops_a_cut_last_line_and_names_any_other_bad_line(tmp_path):
    from kdistill.base.errors import DataError

    path = tmp_path / "rows.jsonl"
    assert fsutil.read_jsonl(path, "fix it") == ([], None)
    fsutil.append_jsonl(path, {"step": 1})
    fsutil.append_jsonl(path, {"step": 2})
    with open(path, "a") as f:
        f.write('{"step": 3, "lo')  # a kill while append_jsonl wrote it
    assert fsutil.read_jsonl(path, "fix it") == ([{"step": 1}, {"step": 2}], 3)
    path.write_text('{"step": 1}\n{"step": 2\n{"step": 3}\n')
    with pytest.raises(DataError, match=rf"{path}, line 2: not valid JSON \(.*\); fix it"):
        fsutil.read_jsonl(path, "fix it")
    path.write_text('{"step": 1}\n[2]\n{"step": 3}\n')
    with pytest.raises(DataError, match=rf"{path}, line 2: a JSON list, not an object; fix it"):
        fsutil.read_jsonl(path, "fix it")
    path.write_text('{"step": "one"}\n{"step": 2}\n')
    with pytest.raises(DataError, match=rf"{path}, line 1: bad step; fix it"):
        fsutil.read_jsonl(path, "fix it", check=lambda row: None if isinstance(row["step"], int) else "bad step")
