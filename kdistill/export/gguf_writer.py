"""GGUF export of a LLaMA-style student (an HF `LlamaForCausalLM` folder) for llama.cpp.

    from kdistill.export import export_gguf
    export_gguf("runs/student/final", "student-q8_0.gguf", qtype="Q8_0")

The file is what llama.cpp's `convert_hf_to_gguf.py` writes for a llama model: tensors renamed to
llama.cpp names, Q/K rows permuted for its rotary layout, `llama.*` hyper-parameters, and the tokenizer
(`gguf_vocab.py`). transformers' GGUF loader (`from_pretrained(dir, gguf_file=name)`) reads it back.

Tensor types, per `qtype`:
- F32, F16: every 2-D matrix in that type; 1-D norm weights are always F32 (as llama.cpp).
- Q8_0: 2-D matrices in blocks of 32 int8 with one f16 scale (8.5 bits a weight).
- Q5_0, Q4_0: the blk.* matrices in blocks of 32 5-bit (4-bit) ints with one f16 scale (5.5 and 4.5
  bits a weight); the token embedding and output matrix stay Q8_0, as `llama-quantize` keeps the output
  at higher precision, because low-bit logits cost far more quality than low-bit hidden layers. On the
  demo student Q5_0 is 7% larger than Q4_0 with a 5x smaller KL (see README.md beside this file).
A matrix whose row length is not a multiple of 32 cannot be blocked and is written F16 (as llama.cpp).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from kdistill.base.errors import ModelError
from kdistill.export.files import atomic_file
from kdistill.export.gguf_vocab import gguf_vocab
from kdistill.models.files import check_model_folder, check_remote_code

QTYPES = ("F32", "F16", "Q8_0", "Q5_0", "Q4_0")
BLOCK = 32  # Q8_0, Q5_0 and Q4_0 block length
FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 7, "Q5_0": 8}  # gguf.LlamaFileType: ALL_F32, MOSTLY_*

# HF parameter name -> llama.cpp tensor name
TENSOR_NAMES = [
    (r"model\.embed_tokens\.weight", "token_embd.weight"),
    (r"model\.norm\.weight", "output_norm.weight"),
    (r"lm_head\.weight", "output.weight"),
    (r"model\.layers\.(\d+)\.input_layernorm\.weight", r"blk.\1.attn_norm.weight"),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", r"blk.\1.ffn_norm.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.q_proj\.weight", r"blk.\1.attn_q.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.k_proj\.weight", r"blk.\1.attn_k.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.v_proj\.weight", r"blk.\1.attn_v.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.o_proj\.weight", r"blk.\1.attn_output.weight"),
    (r"model\.layers\.(\d+)\.mlp\.gate_proj\.weight", r"blk.\1.ffn_gate.weight"),
    (r"model\.layers\.(\d+)\.mlp\.up_proj\.weight", r"blk.\1.ffn_up.weight"),
    (r"model\.layers\.(\d+)\.mlp\.down_proj\.weight", r"blk.\1.ffn_down.weight"),
]


def gguf_name(hf_name: str, where: str) -> str:
    for pattern, target in TENSOR_NAMES:
        if re.fullmatch(pattern, hf_name):
            return re.sub(pattern, target, hf_name)
    raise ModelError(f"{where}: weight {hf_name!r} has no llama.cpp counterpart (biases and extra modules "
                     "are not part of the llama architecture); GGUF export supports plain LlamaForCausalLM")


def permute_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder Q/K rows from HF's rotate-half layout to llama.cpp's interleaved pairs, per head.

    The same permutation as `convert_hf_to_gguf.py` (LlamaModel.permute); transformers' loader undoes it.
    Shapes: weight (n_head * head_dim, D) -> (n_head * head_dim, D)
    """
    rows = weight.shape[0]
    return (weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def check_llama_config(config, where: str) -> None:
    """Refuse what llama.cpp's llama architecture (or transformers' reader of it) cannot represent."""
    model_type = getattr(config, "model_type", None)
    if model_type != "llama":
        raise ModelError(f"{where}/config.json: model_type is {model_type!r}; GGUF export supports LLaMA-style "
                         "students (model_type 'llama', LlamaForCausalLM). For other architectures use "
                         "llama.cpp's convert_hf_to_gguf.py, or export int8/int4 safetensors (--format int8)")
    problems = []
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        problems.append("attention_bias/mlp_bias is true (llama GGUF has no biases)")
    if config.hidden_act != "silu":
        problems.append(f"hidden_act is {config.hidden_act!r}, llama uses 'silu'")
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default" or rope.get("partial_rotary_factor", 1.0) != 1.0:
        problems.append(f"rope_parameters {rope} is not plain RoPE (transformers' GGUF reader drops scaling)")
    if problems:
        raise ModelError(f"{where}/config.json: cannot export to GGUF: " + "; ".join(problems))


def add_hparams(writer, config, qtype: str, name: str) -> None:
    """The `general.*` and `llama.*` keys llama.cpp and transformers read."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = dict(getattr(config, "rope_parameters", None) or {})
    writer.add_name(name)
    writer.add_file_type(FILE_TYPES[qtype])
    writer.add_quantization_version(2)
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))


def tensor_type(name: str, array: np.ndarray, qtype: str) -> str:
    """The ggml type one tensor is written in (see the module docstring)."""
    if array.ndim == 1 or qtype == "F32":
        return "F32"
    if qtype == "F16":
        return "F16"
    if array.shape[-1] % BLOCK:
        return "F16"
    if qtype in ("Q5_0", "Q4_0") and name in ("token_embd.weight", "output.weight"):
        return "Q8_0"
    return qtype


def encode_tensor(array: np.ndarray, ggml_type: str) -> np.ndarray:
    """Float32 array -> the bytes (or floats) `GGUFWriter.add_tensor` takes for that ggml type."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    return quantize(np.ascontiguousarray(array, dtype=np.float32), GGMLQuantizationType[ggml_type])


def gguf_tensors(model, qtype: str, where: str):
    """Yield `(gguf_name, data, ggml_type)` for every weight, Q/K rows permuted."""
    config = model.config
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # tied: llama.cpp reuses token_embd
        name = gguf_name(hf_name, where)
        array = tensor.detach().to(torch.float32).cpu().numpy()
        if name.endswith("attn_q.weight"):
            array = permute_rows(array, config.num_attention_heads)
        elif name.endswith("attn_k.weight"):
            array = permute_rows(array, config.num_key_value_heads or config.num_attention_heads)
        ggml_type = tensor_type(name, array, qtype)
        yield name, encode_tensor(array, ggml_type), ggml_type


def load_student(model_dir, tokenizer_dir=None, llama_only: bool = True):
    """The fp32 model (eval mode) and its tokenizer from an HF folder; ModelError says what is missing."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"{model_dir}: no config.json; --model must be an HF folder written by save_pretrained")
    use_safetensors = check_model_folder(model_dir, "--model")
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    if llama_only:
        check_llama_config(config, str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, trust_remote_code=False,
                                                 use_safetensors=use_safetensors).eval()
    if tokenizer_dir:
        check_remote_code(tokenizer_dir, False, "tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or model_dir, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ModelError(f"{tokenizer_dir or model_dir}: cannot load the tokenizer ({e}); exports carry "
                         "their tokenizer, so save it beside the model (tokenizer.save_pretrained)") from e
    return model, tokenizer


def write_gguf(model, tokenizer, out_path, qtype: str = "F16", name: str = "student", where: str = "model") -> Path:
    """Write an in-memory LlamaForCausalLM and its tokenizer as GGUF (see `export_gguf`)."""
    import gguf

    if qtype not in QTYPES:
        raise ModelError(f"GGUF type {qtype!r} is not supported; choose one of {', '.join(QTYPES)}")
    check_llama_config(model.config, where)
    if hasattr(model, "kdistill_quantization"):
        raise ModelError(f"{where}: this model is already int8/int4-quantised; export GGUF from the float "
                         "student (GGUF's own Q8_0/Q5_0/Q4_0 types quantise it)")
    vocab = gguf_vocab(tokenizer, model.config.vocab_size, where)
    out_path = Path(out_path)
    with atomic_file(out_path) as tmp:
        writer = gguf.GGUFWriter(tmp, arch="llama")
        try:
            add_hparams(writer, model.config, qtype, name)
            vocab.add_to(writer)
            for tensor_name, data, ggml_type in gguf_tensors(model, qtype, where):
                writer.add_tensor(tensor_name, data, raw_dtype=gguf.GGMLQuantizationType[ggml_type])
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return out_path


def export_gguf(model_dir, out_path, qtype: str = "F16", tokenizer_dir=None) -> Path:
    """Write the LLaMA student in `model_dir` as a GGUF file of `qtype` (F32, F16, Q8_0, Q5_0, Q4_0).

    The file appears at `out_path` only when complete. Returns `out_path` as a Path.
    Raises ModelError for a non-llama model, an unsupported tokenizer, type or a missing file.
    """
    if qtype not in QTYPES:
        raise ModelError(f"GGUF type {qtype!r} is not supported; choose one of {', '.join(QTYPES)}")
    model, tokenizer = load_student(model_dir, tokenizer_dir)
    name = Path(model_dir).resolve().name
    return write_gguf(model, tokenizer, out_path, qtype, name, str(model_dir))
