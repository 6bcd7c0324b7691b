"""Weight-only int8 and int4 quantisation of a student, for CPU inference in less memory.

    from kdistill.export import quantize_model, quant_report
    small = quantize_model(model, "int4")            # a new model; `model` is left as it was
    print(quant_report(model, small, batches))       # KL(fp || q), top-1 agreement, bytes saved

Schemes (weights only; activations stay in the model's float type):
- int8: per-output-channel symmetric. One fp32 scale per row, `scale = max|w| / 127`, codes in
  [-127, 127]; w ~= code * scale. 8 bits a weight plus 4 bytes a row.
- int4: group-wise asymmetric, groups of `group_size` (32) along the input dimension. Each group keeps
  an f16 `scale` and an f16 `low` (its minimum, rounded down), codes in [0, 15], w ~= low + code * scale;
  two codes a byte. 5 bits a weight at group 32 (the layout of llama.cpp's Q4_1). Asymmetric because
  a group's weights are rarely centred on zero, and a symmetric code wastes part of its 16 levels there.
  A row whose length is not a multiple of the group is padded (with its last value) to whole groups;
  the padding is dropped again when the weight is rebuilt.
Every weight is within half a step of its original: |w - w_hat| <= scale / 2 (tests check this).

What is quantised: every `nn.Linear` (attention and MLP projections) in the chosen scheme, and with
`embeddings=True` (the default) the token embedding table and the output head in int8 under both
schemes. The vocabulary matrices are a third of a small model, so leaving them in float gives up much
of the saving; but a 4-bit output head costs most of int4's KL (SmolLM2-135M: 0.076 nats/token with an
int4 head, 0.0014 with int8), which is why llama.cpp also keeps its output matrix at higher precision.
A tied head and embedding share one quantised matrix, as they shared one float matrix. RMSNorm weights
and biases stay float. `embeddings=False` keeps the vocabulary matrices in float.

Speed: each forward rebuilds the float weight of a layer from its codes and runs a float matmul.
This saves memory, not time (PyTorch's CPU int8 matmul was ~30x slower than fp32 here); for fast CPU
inference export GGUF and run it in llama.cpp.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError

SCHEMES = ("int8", "int4")
INT4_LEVELS = 15


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8 codes and scales.

    Shapes: weight (O, I) -> codes (O, I) int8, scale (O, 1) fp32
    """
    w = weight.detach().float()
    scale = w.abs().amax(dim=-1, keepdim=True) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row: any scale is exact
    codes = torch.round(w / scale).clamp_(-127, 127).to(torch.int8)
    return codes, scale


def dequantize_int8(codes: torch.Tensor, scale: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Shapes: codes (..., I) int8, scale (..., 1) -> (..., I)"""
    return (codes.float() * scale).to(dtype)


def _f16_toward(x: torch.Tensor, direction: float) -> torch.Tensor:
    """`x` as f16, rounded toward -inf (direction < 0) or +inf (> 0), so the f16 grid still covers x."""
    h = x.half()
    wrong_side = h.float() < x if direction > 0 else h.float() > x
    return torch.where(wrong_side, torch.nextafter(h, torch.full_like(h, direction * float("inf"))), h)


def pad_to_groups(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """Pad rows with their last value up to a multiple of `group_size` (the range of a group is kept).

    Shapes: w (O, I) -> (O, ceil(I / group_size) * group_size)
    """
    extra = -w.shape[-1] % group_size
    return torch.cat([w, w[:, -1:].expand(-1, extra)], dim=-1) if extra else w


def quantize_int4(weight: torch.Tensor, group_size: int = 32):
    """Group-wise asymmetric 4-bit codes, packed two a byte (low nibble first).

    Shapes: weight (O, I) -> packed (O, P / 2) uint8, scale (O, P / g) f16, low (O, P / g) f16,
            with P = I padded up to a multiple of g = group_size
    """
    w = pad_to_groups(weight.detach().float(), group_size)
    groups = w.reshape(w.shape[0], -1, group_size)
    low = _f16_toward(groups.amin(dim=-1), -1.0)
    scale = _f16_toward((groups.amax(dim=-1) - low.float()) / INT4_LEVELS, +1.0)
    if not (torch.isfinite(scale).all() and torch.isfinite(low).all()):
        raise ModelError("int4 quantisation: a weight is beyond the f16 range (|w| > 65504) or not finite; "
                         "check the checkpoint, or use --format int8 (fp32 scales)")
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant group: code 0 is exact
    codes = torch.round((groups - low.float()[..., None]) / scale.float()[..., None]).clamp_(0, INT4_LEVELS)
    codes = codes.to(torch.uint8).reshape(w.shape)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return packed, scale, low


def dequantize_int4(packed, scale, low, in_features: int, dtype=torch.float32) -> torch.Tensor:
    """Rebuild the float weight (any leading dims, e.g. the rows of an embedding lookup).

    Shapes: packed (..., P / 2) uint8, scale (..., G) f16, low (..., G) f16 -> (..., in_features)
    """
    codes = torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(*packed.shape[:-1], -1)
    groups = codes.reshape(*scale.shape, -1).float()
    w = groups * scale.float()[..., None] + low.float()[..., None]
    return w.reshape(*packed.shape[:-1], -1)[..., :in_features].to(dtype)


class QuantLinear(nn.Module):
    """A linear layer whose weight is held as int8 or int4 codes and rebuilt on each forward.

    Buffers (saved in state_dict): `codes` and `scale`, plus `low` for int4; `bias` stays float.
    """

    def __init__(self, in_features: int, out_features: int, scheme: str, group_size: int = 32,
                 bias: bool = False, dtype=torch.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.scheme, self.group_size, self.compute_dtype = scheme, group_size, dtype
        if scheme == "int8":
            self.register_buffer("codes", torch.zeros(out_features, in_features, dtype=torch.int8))
            self.register_buffer("scale", torch.ones(out_features, 1))
        else:
            n_groups = -(-in_features // group_size)
            self.register_buffer("codes", torch.zeros(out_features, n_groups * group_size // 2, dtype=torch.uint8))
            self.register_buffer("scale", torch.ones(out_features, n_groups, dtype=torch.float16))
            self.register_buffer("low", torch.zeros(out_features, n_groups, dtype=torch.float16))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None

    def set_weight(self, weight: torch.Tensor) -> None:
        """Quantise `weight` (out_features, in_features) into this layer's buffers."""
        if self.scheme == "int8":
            self.codes, self.scale = quantize_int8(weight)
        else:
            self.codes, self.scale, self.low = quantize_int4(weight, self.group_size)

    def rows(self, index=None) -> torch.Tensor:
        """The float weight, or only the rows `index` (an embedding lookup). Shapes: index (...) -> (..., I)"""
        pick = (lambda t: t) if index is None else (lambda t: t[index])
        if self.scheme == "int8":
            return dequantize_int8(pick(self.codes), pick(self.scale), self.compute_dtype)
        return dequantize_int4(pick(self.codes), pick(self.scale), pick(self.low), self.in_features,
                               self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.rows().to(x.dtype), bias)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.scheme == "int4" else ""
        return f"in={self.in_features}, out={self.out_features}, {self.scheme}{group}, bias={self.bias is not None}"


class QuantEmbedding(nn.Module):
    """An embedding lookup into a `QuantLinear`'s rows (shared with a tied output head)."""

    def __init__(self, table: QuantLinear, padding_idx: int | None = None):
        super().__init__()
        self.table, self.padding_idx = table, padding_idx

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Shapes: input_ids (B, T) -> (B, T, D)"""
        return self.table.rows(input_ids)


def check_scheme(scheme: str, group_size: int) -> None:
    if scheme not in SCHEMES:
        raise ModelError(f"unknown quantisation scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    if scheme == "int4" and (group_size < 2 or group_size % 2):
        raise ModelError(f"int4 group_size must be a positive even number (two codes a byte), got {group_size}")


def quant_linear(linear: nn.Module, scheme: str, group_size: int) -> QuantLinear:
    """A `QuantLinear` holding `linear`'s (or an embedding's) weight; works for nn.Linear and nn.Embedding."""
    out_features, in_features = linear.weight.shape
    bias = getattr(linear, "bias", None)
    layer = QuantLinear(in_features, out_features, scheme, group_size, bias is not None, linear.weight.dtype)
    layer.set_weight(linear.weight)
    if bias is not None:
        layer.bias.data.copy_(bias.detach())
    return layer


def vocab_modules(model: nn.Module) -> tuple[nn.Module | None, nn.Module | None, bool]:
    """`(input embedding, output head, tied)` of an HF model; `(None, None, False)` for a plain module."""
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return embed, head, head is not None and embed is not None and head.weight is embed.weight


def quantize_model(model: nn.Module, scheme: str, group_size: int = 32, embeddings: bool = True,
                   inplace: bool = False) -> nn.Module:
    """The model with every nn.Linear quantised to `scheme` and, with `embeddings`, the vocabulary
    matrices (token embedding, output head) to int8.

    Returns a new model unless `inplace`; the input stays usable as the float reference.
    Raises ModelError for an unknown scheme or an odd int4 group size.
    """
    check_scheme(scheme, group_size)
    model = model if inplace else copy.deepcopy(model)
    embed, head, tied = vocab_modules(model)
    shared = None  # the tied embedding/head: one quantised matrix serves both
    for name, module in list(model.named_modules()):
        is_vocab = module is embed or module is head
        if (is_vocab and not embeddings) or not (isinstance(module, nn.Linear) or module is embed):
            continue
        if tied and is_vocab and shared is not None:
            layer = shared
        else:
            layer = quant_linear(module, "int8" if is_vocab else scheme, group_size)
        if tied and is_vocab:
            shared = layer
        new = QuantEmbedding(layer, module.padding_idx) if module is embed else layer
        model.set_submodule(name, new)
    model.kdistill_quantization = {"scheme": scheme, "group_size": group_size, "embeddings": embeddings}
    return model.eval()
