"""A tiny teacher built in code and caches written from it (a few hundred positions, well under a second)."""
import pytest

from helpers import save_tiny_teacher
from kdistill.config import load_config

FAST = ["train.seq_len=32", "train.batch_size=4", "train.threads=1", "data.generate.num_samples=16",
        "data.generate.max_new_tokens=24", "student.num_layers=1", "eval.max_new_tokens=4", "cache.k=12",
        "cache.shard_tokens=150"]


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory):
    return save_tiny_teacher(tmp_path_factory.mktemp("teacher") / "t", seed=0)


@pytest.fixture(autouse=True)
def _kdistill_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path_factory.getbasetemp() / "kdcache"))


@pytest.fixture
def make_cfg(teacher_dir):
    def make(out, *extra):
        return load_config(None, [f"teacher.model={teacher_dir}", f"cache.out={out}", *FAST, *extra])
    return make
