"""Fixtures for the student tests (the tiny teacher and private cache are in tests/conftest.py): distill without the speed
measurement (two subprocesses per run that these tests do not look at)."""
import importlib

import pytest


@pytest.fixture
def quick_distill(monkeypatch):
    """`distill(cfg)` without measuring generation speed in subprocesses."""
    return importlib.import_module("kdistill.run.distill").distill  # `from kdistill import distill` can be the function
