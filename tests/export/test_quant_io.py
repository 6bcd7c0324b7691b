"""Saving int8/int4 students as safetensors + JSON and loading them back, bit for bit."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from kdistill.errors import ModelError
from kdistill.export import QuantEmbedding, load_quantized, quantize_model, save_quantized
from kdistill.export import quant_io


def load(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.mark.parametrize("scheme,embeddings", [("int4", True), ("int8", False)])
def test_round_trip_is_exact(student_dir, tmp_path, input_ids, scheme, embeddings):
    quant = quantize_model(load(student_dir), scheme, embeddings=embeddings)
    out = save_quantized(quant, tmp_path / "q")
    loaded = load_quantized(out)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids).logits, quant(input_ids).logits, rtol=0, atol=0)
    assert loaded.kdistill_quantization == {"scheme": scheme, "group_size": 32, "embeddings": embeddings}
    assert isinstance(loaded.get_input_embeddings(), QuantEmbedding) == embeddings


def test_tied_matrix_is_stored_once(student_dir, tmp_path):
    out = save_quantized(quantize_model(load(student_dir), "int4"), tmp_path / "q")
    names = set(load_file(out / "quantized.safetensors"))
    assert "model.embed_tokens.table.codes" in names and "lm_head.codes" not in names
    config = json.loads((out / "quant_config.json").read_text())
    assert config["aliases"] == {"lm_head": "model.embed_tokens.table"}
    loaded = load_quantized(out)
    assert loaded.get_input_embeddings().table is loaded.lm_head


def test_untied_folder_with_tokenizer(untied_dir, tmp_path, input_ids):
    tokenizer = AutoTokenizer.from_pretrained(untied_dir)
    quant = quantize_model(load(untied_dir), "int4")
    out = save_quantized(quant, tmp_path / "q", tokenizer)
    assert AutoTokenizer.from_pretrained(out)("a fox")["input_ids"] == tokenizer("a fox")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(load_quantized(out)(input_ids).logits, quant(input_ids).logits)


def test_plain_from_pretrained_fails_instead_of_random_weights(student_dir, tmp_path):
    out = save_quantized(quantize_model(load(student_dir), "int8"), tmp_path / "q")
    assert not (out / "model.safetensors").exists()
    with pytest.raises(OSError):
        AutoModelForCausalLM.from_pretrained(out)


def test_wrong_folders_are_refused(student_dir, tmp_path):
    with pytest.raises(ModelError, match="quant_config.json.*save_quantized"):
        load_quantized(student_dir)
    with pytest.raises(ModelError, match="quantize_model"):
        save_quantized(load(student_dir), tmp_path / "plain")
    out = save_quantized(quantize_model(load(student_dir), "int8"), tmp_path / "q")
    state = load_file(out / "quantized.safetensors")
    del state["model.layers.0.mlp.up_proj.codes"]
    save_file(state, out / "quantized.safetensors")
    with pytest.raises(ModelError, match="damaged"):
        load_quantized(out)


def test_failed_save_leaves_nothing(student_dir, tmp_path, monkeypatch):
    quant = quantize_model(load(student_dir), "int8")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(quant_io.fsutil, "write_json", broken)
    with pytest.raises(OSError, match="disk full"):
        save_quantized(quant, tmp_path / "q")
    assert list(tmp_path.iterdir()) == []
