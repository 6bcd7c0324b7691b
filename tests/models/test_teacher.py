"""Teacher specs: folders, GGUF files (converted once, cached), bad specs, vocabulary alignment."""
import gguf
import numpy as np
import pytest
import torch
from helpers import save_tiny_teacher, tiny_tokenizer

from kdistill.base.errors import ModelError
from kdistill.models.teacher import load_teacher, resolve
from kdistill.run.evaluate import check_same_tokenizer
from kdistill.sources.model import teacher_signal

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))


def test_folder_teacher_is_frozen(tmp_path):
    folder = save_tiny_teacher(tmp_path / "t")
    model, tok, where = load_teacher(folder, CPU, torch.float32)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert where == folder and len(tok) == model.config.vocab_size


@pytest.mark.parametrize("spec, message", [
    ("/definitely/not/here", "does not exist"),
    ("./missing.gguf", "GGUF file .* does not exist"),
    ("a/b/c/d", "does not exist"),
])
def test_bad_specs(spec, message):
    with pytest.raises(ModelError, match=message):
        resolve(spec)


def test_folder_without_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json and no .gguf"):
        resolve(str(tmp_path / "empty"))


def test_offline_hub_id_fails_clearly():
    with pytest.raises(ModelError, match="Offline, a hub id works only"):
        load_teacher("nobody-kdistill/not-a-model", CPU, torch.float32)


def test_gguf_of_unknown_architecture_is_refused(tmp_path):
    path = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(path), "nosucharch")
    w.add_uint32("nosucharch.block_count", 1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelError, match="nosucharch is not supported.*convert this model"):
        load_teacher(str(path), CPU, torch.float32)


def test_padded_vocabularies_are_aligned(tmp_path):
    folder = save_tiny_teacher(tmp_path / "t")
    teacher, tok, _ = load_teacher(folder, CPU, torch.float32)
    batch = {k: v for k, v in tok(["Once upon a time"], return_tensors="pt").items()}
    v = teacher.config.vocab_size
    wider = teacher_signal(teacher, batch, v + 16)       # student has padding rows
    logits = wider.take(torch.arange(3)).logits
    assert logits.shape[-1] == v + 16 and torch.isneginf(logits[:, v:]).all()
    assert torch.isfinite(logits[:, :v]).all()
    narrower = teacher_signal(teacher, batch, v - 8)     # teacher has padding rows
    assert narrower.vocab_size == v - 8


def test_a_different_tokenizer_is_refused():
    a, b = tiny_tokenizer(320), tiny_tokenizer(300)
    check_same_tokenizer(a, tiny_tokenizer(320), "student")
    with pytest.raises(ModelError, match="tokenizer differs"):
        check_same_tokenizer(a, b, "student")
