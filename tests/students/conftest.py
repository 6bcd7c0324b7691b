"""Fixtures for the student tests: a tiny teacher folder, a private cache, and distill without the speed
measurement (two subprocesses per run that these tests do not look at)."""
import pytest

from helpers import save_tiny_teacher


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory):
    return save_tiny_teacher(tmp_path_factory.mktemp("teacher") / "t", seed=0)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path_factory.getbasetemp() / "kdcache"))


@pytest.fixture
def quick_distill(monkeypatch):
    """`distill(cfg)` without measuring generation speed in subprocesses."""
    from kdistill import distill as module

    return module.distill
