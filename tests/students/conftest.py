"""Fixtures for the student tests (the tiny teacher and private cache are in tests/conftest.py): distill without the speed
measurement (two subprocesses per run that these tests do not look at)."""
import pytest



@pytest.fixture
def quick_distill(monkeypatch):
    """`distill(cfg)` without measuring generation speed in subprocesses."""
    from kdistill import distill as module

    return module.distill
