"""Atomic writes leave the old version or the new one, never a half-written file, with normal modes."""
import os

import pytest

from kdistill import fsutil


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
