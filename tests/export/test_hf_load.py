"""int8/int4 folders load in transformers by themselves (compressed-tensors installed, the `quant` extra),
with the same logits as kdistill's own quantised model; without compressed-tensors, transformers refuses
the folder by name instead of loading random weights."""
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from kdistill.export import load_quantized, quantize_model, save_quantized

pytest.importorskip("compressed_tensors")

HF_ONLY = """
import sys, torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
assert not any(name.startswith("kdistill") for name in sys.modules), "kdistill was imported"
ids = load_file(sys.argv[2])["input_ids"]
with torch.no_grad():
    save_file({"logits": model(ids).logits.contiguous()}, sys.argv[3])
"""


def float_model(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.mark.parametrize("fixture,scheme,embeddings,int8_layers", [
    ("student_dir", "int4", True, ["model.layers.1.mlp.down_proj"]),
    ("untied_dir", "int4", True, []),
    ("student_dir", "int8", True, []),
    ("student_dir", "int4", False, []),
])
def test_from_pretrained_equals_kdistill(request, tmp_path, input_ids, fixture, scheme, embeddings, int8_layers):
    quant = quantize_model(float_model(request.getfixturevalue(fixture)), scheme, embeddings=embeddings,
                           int8_layers=int8_layers)
    out = save_quantized(quant, tmp_path / "q")
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        expected = quant(input_ids).logits
        torch.testing.assert_close(hf(input_ids).logits, expected, rtol=0, atol=0)
        torch.testing.assert_close(load_quantized(out)(input_ids).logits, expected, rtol=0, atol=0)


def test_loads_in_a_process_without_kdistill(student_dir, tmp_path, input_ids):
    quant = quantize_model(float_model(student_dir), "int4")
    out = save_quantized(quant, tmp_path / "q")
    save_file({"input_ids": input_ids}, tmp_path / "ids.safetensors")
    subprocess.run([sys.executable, "-c", HF_ONLY, str(out), str(tmp_path / "ids.safetensors"),
                    str(tmp_path / "logits.safetensors")], check=True, capture_output=True, timeout=300)
    with torch.no_grad():
        torch.testing.assert_close(load_file(tmp_path / "logits.safetensors")["logits"], quant(input_ids).logits,
                                   rtol=0, atol=0)


def test_without_compressed_tensors_transformers_names_it(student_dir, tmp_path, monkeypatch):
    import transformers.quantizers.quantizer_compressed_tensors as quantizer
    import transformers.utils.quantization_config as qc

    out = save_quantized(quantize_model(float_model(student_dir), "int8"), tmp_path / "q")
    monkeypatch.setattr(qc, "is_compressed_tensors_available", lambda: False)
    monkeypatch.setattr(quantizer, "is_compressed_tensors_available", lambda: False)
    with pytest.raises(ImportError, match="compressed-tensors"):
        AutoModelForCausalLM.from_pretrained(out)
