"""Weight-only int8 and int4 quantisation of a student, for CPU inference in less memory.

    from kdistill.export import quantize_model, quant_report
    small = quantize_model(model, "int4")            # a new model; `model` is left as it was
    print(quant_report(model, small, batches))       # KL(fp || q), top-1 agreement, bytes saved

Schemes (weights only; activations stay in the model's float type), both symmetric, as
compressed-tensors stores them (`quant_io.py` writes folders transformers loads):
- int8: per output channel. One fp32 scale per row, `scale = max|w| / 127`, codes in [-127, 127];
  w ~= code * scale. 8 bits a weight plus 4 bytes a row.
- int4: groups of `group_size` (32, 64 or 128) along the input dimension, llama.cpp's Q4_0 rule: the
  scale is the group's largest-magnitude weight divided by -8 (so it carries that weight's sign and the
  weight is exactly code -8), rounded to f16; codes in [-8, 7]; w ~= code * scale. 4.5 bits a weight at
  group 32. With `clip=True` each group's scale is instead the one of `CLIP_RATIOS` x that scale with the
  least squared error (an MSE-optimal clipping search). A layer whose input length is not a multiple of
  the group is kept at int8 (compressed-tensors needs whole groups).
Unclipped, every weight is within half a step of its original, |w - w_hat| <= |scale| / 2, except those
beyond +7.5 steps on the side opposite the group's largest weight (code 7 is the top), within one step.

Why symmetric: the old min/max asymmetric int4 (w ~= low + code * scale, Q4_1's layout) had 25x less
squared error on the demo student but 5x the KL (1.53 nats/token against 0.30): that student started
from the teacher's Q4_1 weights, and a min/max grid snaps its weights back onto them, undoing the
distillation. Squared error is no guide here, so `kdistill export --format int4` picks its group size,
clipping and int8 layers by the KL they measure on calibration text (`choose.py`). Old folders still
load (`legacy.py`).

What is quantised: every `nn.Linear` (attention and MLP projections) in the chosen scheme, and with
`embeddings=True` (the default) the token embedding table and the output head in int8 under both
schemes. The vocabulary matrices are a third of a small model, so leaving them in float gives up much
of the saving; but a 4-bit output head costs most of int4's KL (SmolLM2-135M: 0.076 nats/token with an
int4 head, 0.0014 with int8), which is why llama.cpp also keeps its output matrix at higher precision.
A tied head and embedding share one quantised matrix, as they shared one float matrix. RMSNorm weights
and biases stay float. `embeddings=False` keeps the vocabulary matrices in float.

Speed: each forward rebuilds the float weight of a layer from its codes and runs a float matmul.
This saves memory, not time (PyTorch's CPU int8 matmul was ~30x slower than fp32 here); for fast CPU
inference export GGUF and run it in llama.cpp (`dequantize_model` turns the layers back into float ones).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from kdistill.base.errors import ModelError
from kdistill.export.packing import pack_int4, unpack_int4

SCHEMES = ("int8", "int4")
GROUP_SIZES = (32, 64, 128)  # the int4 group lengths `kdistill export` measures
CLIP_RATIOS = tuple(round(0.80 + 0.02 * i, 2) for i in range(17))  # 0.80 .. 1.12 x the Q4_0 scale


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


def q4_0_scale(groups: torch.Tensor, ratio: float = 1.0) -> torch.Tensor:
    """`ratio` x (the largest-magnitude weight / -8) per group, as f16; 1 for an all-zero group.

    Shapes: groups (O, G, g) -> (O, G) f16
    """
    peak = torch.gather(groups, -1, groups.abs().argmax(dim=-1, keepdim=True)).squeeze(-1)
    scale = (peak * (ratio / -8)).half()
    if not torch.isfinite(scale).all():
        raise ModelError("int4 quantisation: a weight is beyond the f16 range (|w| > 5e5) or not finite; "
                         "check the checkpoint, or use --format int8 (fp32 scales)")
    return torch.where(scale != 0, scale, torch.ones_like(scale))


def int4_codes(groups: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Shapes: groups (O, G, g) fp32, scale (O, G) f16 -> (O, G, g) codes in [-8, 7] (float)"""
    return torch.round(groups / scale.float()[..., None]).clamp_(-8, 7)


def clipped_scale(groups: torch.Tensor) -> torch.Tensor:
    """Per group, the scale among CLIP_RATIOS x the Q4_0 scale with the least squared error.

    Shapes: groups (O, G, g) -> (O, G) f16
    """
    best, best_err = None, None
    for ratio in CLIP_RATIOS:
        scale = q4_0_scale(groups, ratio)
        err = (int4_codes(groups, scale) * scale.float()[..., None] - groups).square().sum(-1)
        if best is None:
            best, best_err = scale, err
        else:
            better = err < best_err
            best, best_err = torch.where(better, scale, best), torch.where(better, err, best_err)
    return best


def quantize_int4(weight: torch.Tensor, group_size: int = 32, clip: bool = False):
    """Group-wise symmetric 4-bit codes (Q4_0's scale rule, or the clipping search), packed into int32.

    Shapes: weight (O, I) -> packed (O, ceil(I / 8)) int32, scale (O, I / group_size) f16
    Raises ModelError when I is not a multiple of group_size.
    """
    out_features, in_features = weight.shape
    if in_features % group_size:
        raise ModelError(f"int4: rows of {in_features} are not whole groups of {group_size}")
    groups = weight.detach().float().reshape(out_features, -1, group_size)
    scale = clipped_scale(groups) if clip else q4_0_scale(groups)
    codes = int4_codes(groups, scale).reshape(out_features, in_features)
    return pack_int4(codes), scale


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, in_features: int, dtype=torch.float32):
    """Rebuild the float weight (any leading dims, e.g. the rows of an embedding lookup), in fp32 as
    compressed-tensors does (code * scale).

    Shapes: packed (..., ceil(I / 8)) int32, scale (..., G) f16 -> (..., I)
    """
    codes = unpack_int4(packed, in_features).float().unflatten(-1, (scale.shape[-1], -1))
    return (codes * scale.float()[..., None]).flatten(-2).to(dtype)


class QuantLinear(nn.Module):
    """A linear layer whose weight is held as int8 or int4 codes and rebuilt on each forward.

    Buffers (saved in state_dict): int8 `codes` (O, I) and fp32 `scale` (O, 1); int4 `packed`
    (O, ceil(I / 8)) int32 and f16 `scale` (O, I / group_size). `bias` stays float.
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
            self.register_buffer("packed", torch.zeros(out_features, -(-in_features // 8), dtype=torch.int32))
            self.register_buffer("scale", torch.ones(out_features, in_features // group_size, dtype=torch.float16))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None

    def set_weight(self, weight: torch.Tensor, clip: bool = False) -> None:
        """Quantise `weight` (out_features, in_features) into this layer's buffers."""
        if self.scheme == "int8":
            self.codes, self.scale = quantize_int8(weight)
        else:
            self.packed, self.scale = quantize_int4(weight, self.group_size, clip)

    def rows(self, index=None) -> torch.Tensor:
        """The float weight, or only the rows `index` (an embedding lookup). Shapes: index (...) -> (..., I)"""
        pick = (lambda t: t) if index is None else (lambda t: t[index])
        if self.scheme == "int8":
            return dequantize_int8(pick(self.codes), pick(self.scale), self.compute_dtype)
        return dequantize_int4(pick(self.packed), pick(self.scale), self.in_features, self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.rows().to(x.dtype), bias)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.scheme == "int4" else ""
        return f"in={self.in_features}, out={self.out_features}, {self.scheme}{group}, bias={self.bias is not None}"


class QuantEmbedding(nn.Module):
    """An embedding lookup into a `QuantLinear`'s rows (shared with a tied output head)."""

    def __init__(self, table: nn.Module, padding_idx: int | None = None):
        super().__init__()
        self.table, self.padding_idx = table, padding_idx

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Shapes: input_ids (B, T) -> (B, T, D)"""
        return self.table.rows(input_ids)


def check_scheme(scheme: str, group_size: int) -> None:
    if scheme not in SCHEMES:
        raise ModelError(f"unknown quantisation scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    if scheme == "int4" and (group_size < 8 or group_size % 8):
        raise ModelError(f"int4 group_size must be a multiple of 8 (eight codes an int32), got {group_size}; "
                         f"the measured choices are {', '.join(map(str, GROUP_SIZES))}")


def quant_linear(linear: nn.Module, scheme: str, group_size: int, clip: bool = False) -> QuantLinear:
    """A `QuantLinear` holding `linear`'s (or an embedding's) weight; works for nn.Linear and nn.Embedding."""
    out_features, in_features = linear.weight.shape
    bias = getattr(linear, "bias", None)
    layer = QuantLinear(in_features, out_features, scheme, group_size, bias is not None, linear.weight.dtype)
    layer.set_weight(linear.weight, clip)
    if bias is not None:
        layer.bias.data.copy_(bias.detach())
    return layer


def vocab_modules(model: nn.Module) -> tuple[nn.Module | None, nn.Module | None, bool]:
    """`(input embedding, output head, tied)` of an HF model; `(None, None, False)` for a plain module."""
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return embed, head, head is not None and embed is not None and head.weight is embed.weight


def layer_schemes(model: nn.Module, scheme: str, group_size: int, embeddings: bool = True,
                  int8_layers=()) -> dict[str, str]:
    """`{module name: "int8" | "int4"}` for every module `quantize_model` replaces (vocabulary: int8;
    int4 layers whose rows are not whole groups, and those in `int8_layers`: int8)."""
    embed, head, _ = vocab_modules(model)
    chosen = {}
    for name, module in model.named_modules():
        is_vocab = module is embed or module is head
        if (is_vocab and not embeddings) or not (isinstance(module, nn.Linear) or module is embed):
            continue
        whole = module.weight.shape[1] % group_size == 0
        chosen[name] = scheme if scheme == "int8" or (not is_vocab and whole and name not in int8_layers) else "int8"
    return chosen


def quantize_model(model: nn.Module, scheme: str, group_size: int = 32, embeddings: bool = True,
                   inplace: bool = False, clip: bool = False, int8_layers=()) -> nn.Module:
    """The model with every nn.Linear quantised to `scheme` (the layers named in `int8_layers` to int8)
    and, with `embeddings`, the vocabulary matrices (token embedding, output head) to int8.

    Returns a new model unless `inplace`; the input stays usable as the float reference.
    Raises ModelError for an unknown scheme or a bad int4 group size.
    """
    check_scheme(scheme, group_size)
    schemes = layer_schemes(model, scheme, group_size, embeddings, set(int8_layers))
    model = model if inplace else copy.deepcopy(model)
    embed, head, tied = vocab_modules(model)
    vocab = {name for name, module in model.named_modules() if module is embed or module is head}
    shared = None  # the tied embedding/head: one quantised matrix serves both
    for name, module in list(model.named_modules()):
        if name not in schemes:
            continue
        is_vocab = name in vocab
        reuse = tied and is_vocab and shared is not None
        layer = shared if reuse else quant_linear(module, schemes[name], group_size, clip)
        shared = layer if tied and is_vocab else shared
        model.set_submodule(name, QuantEmbedding(layer, module.padding_idx) if module is embed else layer)
    int8 = [n for n, s in schemes.items() if s == "int8" and n not in vocab] if scheme == "int4" else []
    model.kdistill_quantization = {"scheme": scheme, "group_size": group_size, "embeddings": embeddings,
                                   "clip": clip, "int8_layers": sorted(int8)}
    return model.eval()


def dequantize_model(model: nn.Module) -> nn.Module:
    """In place: every quantised layer becomes a float nn.Linear / nn.Embedding holding the same values
    (what the quantised forward computes), a tied pair still sharing one matrix. Faster per token
    (no rebuild per forward), float-sized in memory; `kdistill generate` uses it."""
    weights = {}  # id(quantised layer) -> its float Parameter, made once for a tied pair

    def weight_of(layer) -> nn.Parameter:
        if id(layer) not in weights:
            weights[id(layer)] = nn.Parameter(layer.rows().detach(), requires_grad=False)
        return weights[id(layer)]

    modules = list(model.named_modules(remove_duplicate=False))
    tables = {f"{name}.table" for name, module in modules if isinstance(module, QuantEmbedding)}
    for name, module in modules:
        if isinstance(module, QuantEmbedding):
            plain = nn.Embedding(module.table.out_features, module.table.in_features, module.padding_idx)
            plain.weight = weight_of(module.table)
        elif hasattr(module, "rows") and hasattr(module, "compute_dtype") and name not in tables:
            plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            plain.weight = weight_of(module)
            plain.bias = module.bias
        else:
            continue
        model.set_submodule(name, plain)
    if hasattr(model, "kdistill_quantization"):
        del model.kdistill_quantization
    return model.eval()
