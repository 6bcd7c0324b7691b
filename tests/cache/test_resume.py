"""A `kdistill cache` run stopped after some shards resumes at the last complete one, and ends with the
same bytes as a run that was never stopped; other settings in the same folder are refused."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdistill.cache.manifest import CacheError
from kdistill.cache.reader import open_cache
from kdistill.run import cache as writer

ROOT = Path(__file__).parents[2]


def _shards(folder):
    return [(s["file"], s["sha256"]) for s in json.loads((folder / "manifest.json").read_text())["shards"]]


def test_stopped_write_resumes_after_the_last_complete_shard(make_cfg, tmp_path, monkeypatch):
    straight = writer.write_cache(make_cfg(tmp_path / "a"))
    real, calls = writer.shard_signal, []

    def stop_at_third(*args):
        calls.append(args[4])
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if killed while the teacher ran on shard 2
        return real(*args)

    monkeypatch.setattr(writer, "shard_signal", stop_at_third)
    with pytest.raises(KeyboardInterrupt):
        writer.write_cache(make_cfg(tmp_path / "b"))
    assert len(_shards(tmp_path / "b")) == 2
    with pytest.raises(CacheError, match="incomplete.*again"):
        open_cache(tmp_path / "b")
    (tmp_path / "b" / "shard-00002.safetensors").write_bytes(b"half a shard")  # unlisted: rewritten
    calls.clear()
    monkeypatch.setattr(writer, "shard_signal", lambda *a: calls.append(a[4]) or real(*a))
    resumed = writer.write_cache(make_cfg(tmp_path / "b"))
    assert calls == list(range(2, len(straight["shards"])))
    assert _shards(tmp_path / "b") == _shards(tmp_path / "a")
    assert resumed["stats"] == straight["stats"]
    open_cache(tmp_path / "b")


def test_a_damaged_listed_shard_is_rewritten_on_resume(make_cfg, tmp_path):
    writer.write_cache(make_cfg(tmp_path / "a"))
    before = _shards(tmp_path / "a")
    path = tmp_path / "a" / "shard-00001.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    writer.write_cache(make_cfg(tmp_path / "a"))
    assert _shards(tmp_path / "a") == before


def test_other_settings_are_refused_unless_overwritten(make_cfg, tmp_path):
    writer.write_cache(make_cfg(tmp_path / "a"))
    with pytest.raises(CacheError, match=r"other settings \(signal.k: 12 -> 5.*--overwrite"):
        writer.write_cache(make_cfg(tmp_path / "a", "cache.k=5"))
    assert writer.write_cache(make_cfg(tmp_path / "a", "cache.k=5"), overwrite=True)["signal"]["k"] == 5
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(CacheError, match="not empty and holds no teacher cache"):
        writer.write_cache(make_cfg(tmp_path / "other"))


def test_a_full_disk_before_the_first_shard_is_continued_by_the_same_command(make_cfg, tmp_path, monkeypatch):
    import errno

    from kdistill.base import fsutil

    straight = writer.write_cache(make_cfg(tmp_path / "a"))
    real = fsutil.write_bytes

    def full(path, data):
        if path.name.startswith("shard-"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(fsutil, "write_bytes", full)
    with pytest.raises(OSError, match="No space"):
        writer.write_cache(make_cfg(tmp_path / "b"))
    monkeypatch.setattr(fsutil, "write_bytes", real)  # space freed: the same command goes on
    assert writer.write_cache(make_cfg(tmp_path / "b"))["stats"] == straight["stats"]
    assert _shards(tmp_path / "b") == _shards(tmp_path / "a")


def test_a_folder_of_only_kdistills_files_without_a_manifest_is_continued(make_cfg, tmp_path):
    straight = writer.write_cache(make_cfg(tmp_path / "a"))
    out = tmp_path / "b"
    out.mkdir()  # what an older kdistill left when stopped before its first manifest
    (out / "teacher_config.json").write_text("{}")
    (out / ".shard-00000.safetensors.abcd1234.tmp").write_bytes(b"half")
    assert writer.write_cache(make_cfg(out))["stats"] == straight["stats"]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_kill_9_then_rerun_finishes_the_cache(make_cfg, teacher_dir, tmp_path):
    out = tmp_path / "k"
    args = [f"teacher.model={teacher_dir}", f"cache.out={out}", "train.seq_len=32", "train.threads=1",
            "data.generate.num_samples=16", "data.generate.max_new_tokens=24", "cache.k=12", "cache.shard_tokens=20"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen([sys.executable, "-m", "kdistill", "cache", *args], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while not ((out / "manifest.json").is_file() and len(_shards(out)) >= 3):
        assert run.poll() is None and time.time() < deadline, run.stdout.read()
        time.sleep(0.01)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    done = len(_shards(out))
    again = subprocess.run([sys.executable, "-m", "kdistill", "cache", *args], env=env, capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"shard {done + 1}/" in again.stdout and "shard 1/" not in again.stdout
    open_cache(out)
