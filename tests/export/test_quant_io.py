"""Saving int8/int4 students as compressed-tensors folders and loading them back with kdistill, bit for bit
(loading with transformers itself: test_hf_load.py)."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from kdistill.base.errors import ModelError
from kdistill.export import QuantEmbedding, load_quantized, quant_io, quantize_model, save_quantized

V1_FOLDER = Path(__file__).resolve().parents[1] / "fixtures" / "export_v1_int4"


def load(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.mark.parametrize("scheme,embeddings,int8_layers", [("int4", True, ["model.layers.1.self_attn.v_proj"]),
                                                           ("int8", False, [])])
def test_round_trip_is_exact(student_dir, tmp_path, input_ids, scheme, embeddings, int8_layers):
    quant = quantize_model(load(student_dir), scheme, embeddings=embeddings, int8_layers=int8_layers)
    out = save_quantized(quant, tmp_path / "q")
    loaded = load_quantized(out)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids).logits, quant(input_ids).logits, rtol=0, atol=0)
    assert loaded.kdistill_quantization == quant.kdistill_quantization
    assert loaded.kdistill_quantization["int8_layers"] == int8_layers
    assert isinstance(loaded.get_input_embeddings(), QuantEmbedding) == embeddings


def test_folder_uses_compressed_tensors_names(student_dir, tmp_path):
    """int4 layers: weight_packed (int32), weight_scale (f16), weight_shape; int8: weight, weight_scale.
    The tied int8 matrix is stored once: the head keeps only its scale."""
    out = save_quantized(quantize_model(load(student_dir), "int4"), tmp_path / "q")
    state = load_file(out / "model.safetensors")
    up = "model.layers.0.mlp.up_proj"
    assert state[f"{up}.weight_packed"].dtype == torch.int32 and state[f"{up}.weight_scale"].dtype == torch.float16
    assert state[f"{up}.weight_shape"].tolist() == [128, 64]
    assert state["model.embed_tokens.weight"].dtype == torch.int8 and "lm_head.weight" not in state
    assert torch.equal(state["lm_head.weight_scale"], state["model.embed_tokens.weight_scale"])
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "mixed-precision"
    formats = {g["format"]: g for g in qc["config_groups"].values()}
    assert up in formats["pack-quantized"]["targets"] and "lm_head" in formats["int-quantized"]["targets"]
    loaded = load_quantized(out)
    assert loaded.get_input_embeddings().table is loaded.lm_head


def test_untied_folder_with_tokenizer(untied_dir, tmp_path, input_ids):
    tokenizer = AutoTokenizer.from_pretrained(untied_dir)
    quant = quantize_model(load(untied_dir), "int4")
    out = save_quantized(quant, tmp_path / "q", tokenizer)
    assert AutoTokenizer.from_pretrained(out)("a fox")["input_ids"] == tokenizer("a fox")["input_ids"]
    assert "lm_head.weight" in load_file(out / "model.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(load_quantized(out)(input_ids).logits, quant(input_ids).logits, rtol=0, atol=0)


def test_float_vocabulary_stays_tied(student_dir, tmp_path, input_ids):
    quant = quantize_model(load(student_dir), "int8", embeddings=False)
    out = save_quantized(quant, tmp_path / "q")
    assert "lm_head.weight" not in load_file(out / "model.safetensors")
    loaded = load_quantized(out)
    assert loaded.lm_head.weight is loaded.get_input_embeddings().weight
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids).logits, quant(input_ids).logits, rtol=0, atol=0)


def test_earlier_format_still_loads():
    """A folder of kdistill's version-1 format (min/max int4, quant_config.json), written by that version
    with its logits: it loads and gives them exactly."""
    expected = load_file(V1_FOLDER / "expected_logits.safetensors")
    model = load_quantized(V1_FOLDER)
    assert model.kdistill_quantization["scheme"] == "int4"
    with torch.no_grad():
        # to fp32 rounding: the stored logits came from another CPU, whose matmul kernels sum in another order
        torch.testing.assert_close(model(expected["input_ids"]).logits, expected["logits"], rtol=1e-5, atol=1e-5)


def test_wrong_folders_are_refused(student_dir, tmp_path):
    with pytest.raises(ModelError, match="no quantization_config.*kdistill export"):
        load_quantized(student_dir)
    with pytest.raises(ModelError, match="quantize_model"):
        save_quantized(load(student_dir), tmp_path / "plain")
    out = save_quantized(quantize_model(load(student_dir), "int8"), tmp_path / "q")
    state = load_file(out / "model.safetensors")
    del state["model.layers.0.mlp.up_proj.weight"]
    save_file(state, out / "model.safetensors")
    with pytest.raises(ModelError, match="damaged.*up_proj|up_proj.*damaged"):
        load_quantized(out)


def test_foreign_schemes_are_named(student_dir, tmp_path):
    out = save_quantized(quantize_model(load(student_dir), "int8"), tmp_path / "q")
    config = json.loads((out / "config.json").read_text())
    group = next(iter(config["quantization_config"]["config_groups"].values()))
    group["weights"]["symmetric"] = False
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="does not read.*compressed-tensors"):
        load_quantized(out)


def test_failed_save_leaves_nothing(student_dir, tmp_path, monkeypatch):
    quant = quantize_model(load(student_dir), "int8")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(quant_io.fsutil, "write_json", broken)
    with pytest.raises(OSError, match="disk full"):
        save_quantized(quant, tmp_path / "q")
    assert list(tmp_path.iterdir()) == []
