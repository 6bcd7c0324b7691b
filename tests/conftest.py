"""Shared test settings: one torch thread (two cores, and other jobs may be running), offline hub."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory):
    """A tiny LLaMA teacher folder with its tokenizer, built in code once per session (read-only)."""
    from helpers import save_tiny_teacher

    return save_tiny_teacher(tmp_path_factory.mktemp("teacher") / "t", seed=0)


@pytest.fixture(autouse=True)
def _kdistill_cache(tmp_path_factory, monkeypatch):
    """A private kdistill cache for the session, never the user's ~/.cache/kdistill."""
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path_factory.getbasetemp() / "kdcache"))


@pytest.fixture(autouse=True)
def _cpu_path_outside_tests_gpu(request, monkeypatch):
    """The suite checks the CPU path (CI has no GPU; its bf16-free numbers are what tests compare), and
    tests/gpu checks CUDA. On a machine with a GPU, hide it from every other test and its subprocesses (a
    Mac's MPS from every other test: `train.device=auto` would pick it)."""
    if request.node.path.parent.name != "gpu":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
