"""Session fixtures for the export tests: tiny students written once."""
from pathlib import Path

import pytest
import torch

from tests.helpers import tiny_tokenizer

from .export_fixtures import SENTENCES, save_student


@pytest.fixture(scope="session")
def student_dir(tmp_path_factory) -> Path:
    """A tied-embedding tiny student (vocab 320) with its tokenizer."""
    return save_student(tmp_path_factory.mktemp("student") / "tiny")


@pytest.fixture(scope="session")
def untied_dir(tmp_path_factory) -> Path:
    return save_student(tmp_path_factory.mktemp("untied") / "tiny-untied", tie_word_embeddings=False)


@pytest.fixture(scope="session")
def input_ids() -> torch.Tensor:
    tok = tiny_tokenizer()
    ids = tok(" ".join(SENTENCES[:3]), add_special_tokens=False)["input_ids"]
    return torch.tensor([ids[:48]])
