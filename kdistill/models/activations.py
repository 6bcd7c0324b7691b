"""Forward hooks that capture a decoder model's intermediate activations, on the layers asked for only.

    request = {3: ("residual",), 5: ("normed", "qk")}          # layer index -> what to keep
    with capture(model, request) as found:
        model(input_ids=ids, attention_mask=am, use_cache=False)
    found[3]["residual"]                                       # (B, T, D)

What each name keeps from block i (a LLaMA-family block: input_layernorm, self_attn with q_proj/k_proj
and rotary position embeddings, mlp; `modeling.decoder_layers` finds the blocks):
- residual: the residual stream leaving block i (its output); `update`: output minus input, what the
  block adds (for the layer map: a copied block adds the same thing wherever it sits).
- normed: that stream as the next block reads it (block i+1's input norm, gains included; the final
  norm after the last block). Massive-activation channels, which dominate the raw stream, are the ones
  those gains shrink.
- attn_out: block i's self-attention output (after o_proj, before it joins the stream); any attention
  implementation (eager, sdpa, flash) gives it.
- qk: q_proj's and k_proj's outputs, (B, T, H*hd) and (B, T, Hkv*hd), and the block's rotary cos/sin
  (B, T, hd), so a loss can recompute q·k for a few query rows without any (T, T) map; plus `heads`,
  `kv_heads` and `scaling` of the block.
Tensors keep the model's dtype and autograd graph: the student's carry gradients, a teacher runs under
no_grad. The hooks fire inside the model's own forward, so under a DDP/FSDP wrapper they see every
weight unsharded, and they are removed when the block ends.
"""
from __future__ import annotations

import contextlib

from torch import nn

from kdistill.base.errors import ModelError
from kdistill.models.heads import decoder, decoder_layers

NAMES = ("residual", "update", "normed", "attn_out", "qk")


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def layer_count(model) -> int:
    layers = decoder_layers(model)
    if layers is None:
        raise ModelError(f"{type(model).__name__}: no list of decoder layers found to take activations from")
    return len(layers)


def attention_of(block: nn.Module, where: str) -> nn.Module:
    """Block's self-attention when it has LLaMA-style q_proj/k_proj, else ModelError naming `where`."""
    attn = getattr(block, "self_attn", None)
    if attn is None or not all(hasattr(attn, k) for k in ("q_proj", "k_proj", "head_dim", "scaling")):
        raise ModelError(f"{where}: {type(block).__name__} has no LLaMA-style self_attn (q_proj, k_proj, rotary "
                         "embeddings); attention_map needs a LLaMA-family model (llama, mistral, qwen2)")
    return attn


def _next_norm(model, layers: nn.ModuleList, i: int) -> nn.Module:
    block = layers[i + 1] if i + 1 < len(layers) else None
    norm = getattr(block, "input_layernorm", None) if block is not None else getattr(decoder(model), "norm", None)
    if norm is None:
        raise ModelError(f"{type(model).__name__}: no input norm after layer {i}; use target: residual")
    return norm


def _qk_hooks(attn: nn.Module, keep: dict) -> list:
    config = getattr(attn, "config", None)
    keep.update(heads=getattr(config, "num_attention_heads", None), scaling=attn.scaling,
                kv_heads=getattr(config, "num_key_value_heads", None), head_dim=attn.head_dim)

    def positions(_module, _args, kwargs):
        keep["cos"], keep["sin"] = kwargs["position_embeddings"]

    def save(name):
        return lambda _module, _inputs, output: keep.__setitem__(name, output)

    return [attn.register_forward_pre_hook(positions, with_kwargs=True),
            attn.q_proj.register_forward_hook(save("q")), attn.k_proj.register_forward_hook(save("k"))]


def _block_hooks(model, layers: nn.ModuleList, i: int, names, keep: dict) -> list:
    block, handles = layers[i], []
    if "residual" in names or "update" in names:
        def out(_module, inputs, output):
            keep["residual"] = _first(output)
            if "update" in names:
                keep["update"] = _first(output) - inputs[0] if inputs else None

        handles.append(block.register_forward_hook(out))
    if "normed" in names:
        handles.append(_next_norm(model, layers, i).register_forward_hook(
            lambda _m, _i, output: keep.__setitem__("normed", output)))
    if "attn_out" in names:
        handles.append(getattr(block, "self_attn").register_forward_hook(
            lambda _m, _i, output: keep.__setitem__("attn_out", _first(output))))
    if "qk" in names:
        keep["qk"] = {}
        handles += _qk_hooks(attention_of(block, f"layer {i}"), keep["qk"])
    return handles


@contextlib.contextmanager
def capture(model, request: dict[int, tuple[str, ...]]):
    """Hooks on the requested layers for the body; yields {layer: {name: tensor}} filled by the forward.

    A decoder layer's input arrives as a positional argument in transformers' LLaMA (so `update` sees it)."""
    if not request:  # nothing asked: no hooks, and any model will do
        yield {}
        return
    layers = decoder_layers(model)
    if layers is None:
        raise ModelError(f"{type(model).__name__}: no list of decoder layers found to take activations from")
    found, handles = {}, []
    try:
        for i, names in sorted(request.items()):
            if not 0 <= i < len(layers):
                raise ModelError(f"{type(model).__name__} has {len(layers)} layers (0..{len(layers) - 1}); "
                                 f"layer {i} does not exist")
            bad = [n for n in names if n not in NAMES]
            if bad:
                raise ValueError(f"unknown activation {bad}; known: {NAMES}")
            found[i] = {}
            handles += _block_hooks(model, layers, i, names, found[i])
        yield found
    finally:
        for h in handles:
            h.remove()
