"""A tiny teacher built in code and caches written from it (a few hundred positions, well under a second)."""
import pytest

from kdistill.config.schema import load_config

FAST = ["train.seq_len=32", "train.batch_size=4", "train.threads=1", "data.generate.num_samples=16",
        "data.generate.max_new_tokens=24", "student.num_layers=1", "eval.max_new_tokens=4", "cache.k=12",
        "cache.shard_tokens=150"]


@pytest.fixture
def make_cfg(teacher_dir):
    def make(out, *extra):
        return load_config(None, [f"teacher.model={teacher_dir}", f"cache.out={out}", *FAST, *extra])
    return make
