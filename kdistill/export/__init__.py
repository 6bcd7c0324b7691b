"""Quantisation and export of a distilled student (`kdistill export`).

- `export_gguf(model_dir, out_path, qtype)`: a LLaMA-style student as a GGUF file (F32, F16, Q8_0,
  Q5_0, Q4_0) with its tokenizer, for llama.cpp; transformers' GGUF reader loads it back (`gguf_writer.py`).
- `quantize_model(model, "int8" | "int4")`: weight-only int8 (per channel) or symmetric int4 (groups of
  32/64/128, some layers int8) (`quantize.py`); `choose_int4` picks the int4 scheme by measured KL within
  a size budget (`choose.py`); `save_quantized` / `load_quantized` keep it as a compressed-tensors folder
  that transformers also loads by itself (`quant_io.py`, `ct_format.py`).
- `quant_report(model_fp, model_q, batches)`: held-out KL(fp || q), top-1 agreement, bytes saved
  (`measure.py`); `bounds.py` says what KL each type should give.

Plain HF folders (safetensors) are the default output everywhere; nothing is pickled, and every file
is written under a temporary name and renamed into place when complete.
"""
from kdistill.export.choose import choose_int4
from kdistill.export.gguf_writer import export_gguf, write_gguf
from kdistill.export.measure import compare_logits, gguf_report, kl_per_token, quant_report, weight_bytes
from kdistill.export.quant_io import load_quantized, save_quantized
from kdistill.export.quantize import QuantEmbedding, QuantLinear, dequantize_model, quantize_model

__all__ = [
    "export_gguf", "write_gguf", "quantize_model", "dequantize_model", "choose_int4", "QuantLinear",
    "QuantEmbedding", "quant_report", "compare_logits", "gguf_report", "kl_per_token", "weight_bytes",
    "save_quantized", "load_quantized",
]
