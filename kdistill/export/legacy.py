"""Reading int8/int4 folders written by kdistill before compressed-tensors folders (format version 1).

Those folders hold `quant_config.json` and `quantized.safetensors`; their int4 layers are min/max
asymmetric (w ~= low + code * scale, f16 scale and low per group of 32, codes 0..15 two a byte). That
scheme cost KL 1.53 nats/token on the demo student (it snaps weights back onto the Q4_1 grid of the
teacher they were initialised from), so new exports never use it; `load_quantized` still reads such a
folder, so nothing exported earlier is lost. Re-export the float student for the new scheme.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from kdistill.base.errors import ModelError
from kdistill.export.quantize import QuantEmbedding, QuantLinear

FORMAT = "kdistill-weight-only"
WEIGHTS = "quantized.safetensors"
CONFIG = "quant_config.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def dequantize_minmax(packed, scale, low, in_features: int, dtype=torch.float32) -> torch.Tensor:
    """Shapes: packed (..., P / 2) uint8, scale (..., G) f16, low (..., G) f16 -> (..., in_features)"""
    codes = torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(*packed.shape[:-1], -1)
    groups = codes.reshape(*scale.shape, -1).float()
    w = groups * scale.float()[..., None] + low.float()[..., None]
    return w.reshape(*packed.shape[:-1], -1)[..., :in_features].to(dtype)


class MinMaxInt4Linear(nn.Module):
    """A version-1 int4 layer: buffers `codes` (packed nibbles), `scale` and `low`, rebuilt per forward."""

    def __init__(self, in_features: int, out_features: int, group_size: int, bias: bool, dtype):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.scheme, self.compute_dtype = "int4-minmax", dtype
        n_groups = -(-in_features // group_size)
        self.register_buffer("codes", torch.zeros(out_features, n_groups * group_size // 2, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(out_features, n_groups, dtype=torch.float16))
        self.register_buffer("low", torch.zeros(out_features, n_groups, dtype=torch.float16))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None

    def rows(self, index=None) -> torch.Tensor:
        pick = (lambda t: t) if index is None else (lambda t: t[index])
        return dequantize_minmax(pick(self.codes), pick(self.scale), pick(self.low), self.in_features,
                                 self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return nn.functional.linear(x, self.rows().to(x.dtype), bias)


def is_v1_folder(model_dir: Path) -> bool:
    return (model_dir / CONFIG).is_file()


def _layer(spec: dict, group_size: int) -> nn.Module:
    dtype = DTYPES[spec["dtype"]]
    if spec["scheme"] == "int8":
        return QuantLinear(spec["in_features"], spec["out_features"], "int8", group_size, spec["bias"], dtype)
    return MinMaxInt4Linear(spec["in_features"], spec["out_features"], group_size, spec["bias"], dtype)


def rebuild(model: nn.Module, qc: dict) -> nn.Module:
    """Swap in empty version-1 modules of the recorded shapes (the weights are loaded next)."""
    tables = {f"{name}.table" for name in qc["embedding_modules"]}
    for name in qc["embedding_modules"]:
        padding_idx = getattr(model.get_submodule(name), "padding_idx", None)
        model.set_submodule(name, QuantEmbedding(_layer(qc["layers"][f"{name}.table"], qc["group_size"]),
                                                 padding_idx))
    for name in qc["layers"]:
        if name not in tables:
            model.set_submodule(name, _layer(qc["layers"][name], qc["group_size"]))
    for name, target in qc["aliases"].items():
        model.set_submodule(name, model.get_submodule(target))
    return model


def load_v1(model_dir: Path, empty_model) -> nn.Module:
    """A version-1 folder as a model; `empty_model(model_dir)` builds the float architecture from config.json."""
    from safetensors.torch import load_file

    qc = json.loads((model_dir / CONFIG).read_text())
    if qc.get("format") != FORMAT or qc.get("version") != 1:
        raise ModelError(f"{model_dir / CONFIG}: format {qc.get('format')!r} version {qc.get('version')!r} is "
                         f"not {FORMAT!r} version 1; re-export it with this kdistill version")
    model = rebuild(empty_model(model_dir), qc)
    state = load_file(str(model_dir / qc["weights"]))
    for name, kept in qc.get("shared_tensors", {}).items():
        state[name] = state[kept]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(f"{model_dir}: the weights do not match {CONFIG} ({e}); the folder is damaged "
                         "or was edited, so export it again") from e
    model.kdistill_quantization = {k: qc[k] for k in ("scheme", "group_size", "embeddings")}
    return model.eval()
