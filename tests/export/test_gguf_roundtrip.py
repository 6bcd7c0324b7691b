"""GGUF export, read back by transformers' own GGUF loader (the reference for llama.cpp's layout).

Logit bounds on the tiny student (random weights, the worst case for quantisation; logits up to ~3.5):
F32 equal within 1e-5; F16 max |error| <= 2e-3 x max |logit| (f16 has an 11-bit mantissa);
Q8_0 <= 5e-2 x max |logit| and mean KL <= 1e-3; Q5_0 <= 0.2 x max |logit| and mean KL <= 0.01;
Q4_0 <= 0.5 x max |logit| and mean KL <= 0.05.
Per weight (test_tensor_reconstruction): Q8_0 within 0.6 of a step d = absmax/127 of its block of 32
(half a step, plus the f16 rounding of d); Q5_0 and Q4_0 within 1.1 steps of d = absmax/16 and absmax/8
(ggml maps the signed extreme to -16 or -8, so the opposite extreme clamps at +15 or +7, a whole step).
"""
import gguf
import numpy as np
import pytest
import torch
from gguf import GGUFReader, dequantize
from transformers import AutoModelForCausalLM, AutoTokenizer

from kdistill.base.errors import ModelError
from kdistill.export import compare_logits, export_gguf, quantize_model, write_gguf
from kdistill.export.gguf_writer import permute_rows
from kdistill.export.measure import load_gguf

from .export_fixtures import save_student

BOUNDS = {"F16": (2e-3, 1e-5), "Q8_0": (5e-2, 1e-3), "Q5_0": (0.2, 0.01), "Q4_0": (0.5, 0.05)}  # (relative max error, mean KL)


def source(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def fields(path) -> dict:
    reader = GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()
            if not name.startswith("tokenizer.ggml.")}


def test_f32_round_trip_is_exact(student_dir, tmp_path, input_ids):
    path = export_gguf(student_dir, tmp_path / "s-f32.gguf", "F32")
    loaded = load_gguf(path)
    with torch.no_grad():
        ref, out = source(student_dir)(input_ids).logits, loaded(input_ids).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    assert loaded.config.tie_word_embeddings
    assert loaded.config.num_key_value_heads == 2 and loaded.config.head_dim == 16


@pytest.mark.parametrize("qtype", ["F16", "Q8_0", "Q5_0", "Q4_0"])
def test_quantised_round_trip_within_bounds(student_dir, tmp_path, input_ids, qtype):
    src = source(student_dir)
    path = export_gguf(student_dir, tmp_path / f"s-{qtype}.gguf", qtype)
    report = compare_logits(src, load_gguf(path), [input_ids])
    with torch.no_grad():
        scale = src(input_ids).logits.abs().max().item()
    rel_bound, kl_bound = BOUNDS[qtype]
    assert 0 < report["max_abs_logit_error"] <= rel_bound * scale
    assert report["kl_mean"] <= kl_bound


def test_untied_head_round_trip(untied_dir, tmp_path, input_ids):
    path = export_gguf(untied_dir, tmp_path / "u.gguf", "F32")
    names = {t.name for t in GGUFReader(path).tensors}
    assert "output.weight" in names
    loaded = load_gguf(path)
    assert not loaded.config.tie_word_embeddings
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids).logits, source(untied_dir)(input_ids).logits,
                                   rtol=0, atol=1e-5)


def test_tied_model_has_no_output_tensor(student_dir, tmp_path):
    path = export_gguf(student_dir, tmp_path / "t.gguf", "Q8_0")
    names = [t.name for t in GGUFReader(path).tensors]
    assert "output.weight" not in names and "token_embd.weight" in names
    assert len(names) == 2 + 9 * 2  # embedding, output norm, 9 tensors per block


@pytest.mark.parametrize("qtype", ["Q8_0", "Q5_0", "Q4_0"])
def test_tensor_types_and_hyperparameters(student_dir, tmp_path, qtype):
    path = export_gguf(student_dir, tmp_path / "h.gguf", qtype)
    types = {t.name: t.tensor_type.name for t in GGUFReader(path).tensors}
    assert types["blk.0.attn_norm.weight"] == "F32" and types["output_norm.weight"] == "F32"
    assert types["blk.1.ffn_down.weight"] == qtype and types["blk.0.attn_q.weight"] == qtype
    assert types["token_embd.weight"] == "Q8_0"  # kept at 8 bits for Q5_0 and Q4_0 too
    meta = fields(path)
    assert meta["general.architecture"] == "llama"
    assert meta["general.file_type"] == {"Q8_0": 7, "Q5_0": 8, "Q4_0": 2}[qtype]
    expected = {"context_length": 128, "embedding_length": 64, "block_count": 2, "feed_forward_length": 128,
                "attention.head_count": 4, "attention.head_count_kv": 2, "rope.dimension_count": 16,
                "vocab_size": 320}
    assert {key: meta[f"llama.{key}"] for key in expected} == expected
    assert meta["llama.rope.freq_base"] == pytest.approx(10000.0)
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)


@pytest.mark.parametrize("qtype", ["F16", "Q8_0", "Q5_0", "Q4_0"])
def test_tensor_reconstruction(student_dir, tmp_path, qtype):
    """Every stored matrix, dequantised and un-permuted, is within the type's per-weight bound."""
    path = export_gguf(student_dir, tmp_path / "r.gguf", qtype)
    src = source(student_dir).state_dict()
    tensors = {t.name: t for t in GGUFReader(path).tensors}
    pairs = {"token_embd.weight": "model.embed_tokens.weight",
             "blk.1.attn_q.weight": "model.layers.1.self_attn.q_proj.weight",
             "blk.1.attn_k.weight": "model.layers.1.self_attn.k_proj.weight",
             "blk.0.ffn_down.weight": "model.layers.0.mlp.down_proj.weight"}
    for name, hf_name in pairs.items():
        w = src[hf_name].numpy()
        if "attn_q" in name or "attn_k" in name:
            w = permute_rows(w, 4 if "attn_q" in name else 2)
        t = tensors[name]
        got = dequantize(t.data, t.tensor_type).reshape(w.shape)
        blocks = np.abs(w).reshape(-1, 32).max(axis=1, keepdims=True)
        err = np.abs(got - w).reshape(-1, 32)
        kind = t.tensor_type.name
        if kind == "F16":
            assert np.all(err <= 2.0 ** -11 * np.abs(w).reshape(-1, 32) + 1e-7)
        elif kind == "Q8_0":
            assert np.all(err <= 0.6 * blocks / 127)
        else:
            assert kind == qtype and np.all(err <= 1.1 * blocks / {"Q5_0": 16, "Q4_0": 8}[kind])


def test_rows_not_a_multiple_of_the_block_stay_f16(tmp_path, input_ids):
    model_dir = save_student(tmp_path / "odd", intermediate_size=80)  # ffn_down rows are 80 long
    path = export_gguf(model_dir, tmp_path / "odd.gguf", "Q4_0")
    types = {t.name: t.tensor_type.name for t in GGUFReader(path).tensors}
    assert types["blk.0.ffn_down.weight"] == "F16" and types["blk.0.ffn_up.weight"] == "Q4_0"
    report = compare_logits(source(model_dir), load_gguf(path), [input_ids])
    assert report["kl_mean"] <= 0.05


def test_non_llama_is_refused(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64)).save_pretrained(tmp_path / "g")
    with pytest.raises(ModelError, match=r"config.json.*model_type is 'gpt2'.*LLaMA"):
        export_gguf(tmp_path / "g", tmp_path / "g.gguf")
    assert not (tmp_path / "g.gguf").exists()


def test_llama_with_biases_is_refused(tmp_path):
    model_dir = save_student(tmp_path / "bias", attention_bias=True)
    with pytest.raises(ModelError, match="attention_bias"):
        export_gguf(model_dir, tmp_path / "b.gguf")


def test_missing_folder_and_unknown_type(tmp_path, student_dir):
    with pytest.raises(ModelError, match="no config.json"):
        export_gguf(tmp_path / "nothing", tmp_path / "x.gguf")
    with pytest.raises(ModelError, match="Q4_K.*F32, F16, Q8_0, Q5_0, Q4_0"):
        export_gguf(student_dir, tmp_path / "x.gguf", "Q4_K")


def test_already_quantised_model_is_refused(student_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    with pytest.raises(ModelError, match="already int8/int4"):
        write_gguf(quantize_model(source(student_dir), "int8"), tokenizer, tmp_path / "q.gguf")


def test_failed_write_leaves_no_file(student_dir, tmp_path, monkeypatch):
    out = tmp_path / "out" / "s.gguf"
    out.parent.mkdir()
    out.write_bytes(b"previous export")

    write_kv = gguf.GGUFWriter.write_kv_data_to_file

    def broken(self):  # header and metadata reach the disk, then the tensors fail
        write_kv(self)
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_kv_data_to_file", broken)
    with pytest.raises(OSError, match="disk full"):
        export_gguf(student_dir, out, "F16")
    assert out.read_bytes() == b"previous export"  # the old file is untouched
    assert [p.name for p in out.parent.iterdir()] == ["s.gguf"]  # and no temporary file is left
