"""Model plumbing shared by teachers, students, the cache and evaluation, whatever the architecture.

transformers names the same parts differently per family (LLaMA `model.layers`, GPT-2 `transformer.h`,
OPT `model.decoder.layers`); these helpers find them once so no caller tests an architecture's names.

    hidden = final_hidden(model, input_ids, attention_mask)      # (B, T, D): the output layer's input
    logits = hidden @ head_weight(model).T                        # exact only when plain_head(model)
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

# config fields that make the logits something other than hidden @ W.T
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def unwrap(model):
    """The transformers model under a peft wrapper (a LoRA student), else `model` itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder(model):
    """The inner model that returns `last_hidden_state` (LLaMA `.model`, GPT-2 `.transformer`), or None."""
    base = unwrap(model)
    inner = getattr(base, "base_model", None)
    return inner if inner is not None and inner is not base else None


def decoder_layers(model) -> nn.ModuleList | None:
    """The list of transformer blocks (`layers`, `h`, `decoder.layers`, `blocks`), or None if not found."""
    inner = decoder(model)
    if inner is None:
        return None
    for path in ("layers", "h", "decoder.layers", "blocks"):
        obj = inner
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.ModuleList):
            return obj
    return None


def final_hidden(model, input_ids, attention_mask, position_ids=None):
    """The input of the model's output layer (after its final norm). `attention_mask` is the 2D padding
    mask, or the 4D one of packed rows with their `position_ids` (data/packing.py `model_inputs`).
    Shapes: input_ids (B, T), attention_mask (B, T) or (B, 1, T, T), position_ids (B, T) -> (B, T, D)"""
    extra = {} if position_ids is None else {"position_ids": position_ids}
    inner = decoder(model)
    if inner is not None and decoder_layers(model) is not None:
        return inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra).last_hidden_state
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False,
                **extra)
    return out.hidden_states[-1]


def head_weight(model) -> torch.Tensor:
    """The output layer's weight. Shapes: -> (V, D)"""
    return model.get_output_embeddings().weight


def plain_head(model) -> bool:
    """True when logits == final_hidden @ head_weight.T exactly: a bias-free linear head and no
    softcapping or logit scale (Gemma 2, Cohere, Granite apply one). Otherwise use the model's logits."""
    head = unwrap(model).get_output_embeddings()
    if not isinstance(head, nn.Linear) or head.bias is not None:
        return False
    config = unwrap(model).config
    config = getattr(config, "get_text_config", lambda: config)()
    return all(getattr(config, k, None) in (None, 1, 1.0) for k in _LOGIT_TRANSFORMS)


def logits_from_hidden_ok(model) -> bool:
    """True when logits may be formed as final_hidden @ head_weight.T outside the forward: a plain head
    whose weight is in memory (not offloaded by Accelerate, where it may sit on the meta device between
    forwards, and not sharded)."""
    head = unwrap(model).get_output_embeddings()
    return plain_head(model) and not hasattr(head, "_hf_hook") and head.weight.device.type != "meta"


def count_parameters(model) -> int:
    """Exact count of distinct parameters (tied embedding and head counted once; a 4-bit weight counts
    its logical shape, not its packed storage)."""
    def logical(p) -> int:
        state = getattr(p, "quant_state", None)
        return state.shape.numel() if state is not None and hasattr(state, "shape") else p.numel()

    return sum(logical(p) for p in {id(p): p for p in model.parameters()}.values())


def model_device(model) -> torch.device:
    """Where the model's inputs go: its embedding's device (the first device of a dispatched model)."""
    return unwrap(model).get_input_embeddings().weight.device


@contextlib.contextmanager
def resident(module):
    """The module's weights in memory (on the CPU) for the body, also where Accelerate offloaded them to
    the CPU or disk (then they sit on the meta device between forwards); a no-op for a plain module."""
    hooked = [m for m in module.modules() if getattr(getattr(m, "_hf_hook", None), "offload", False)]
    if not hooked:
        yield module
        return
    from accelerate.utils import align_module_device

    with contextlib.ExitStack() as stack:
        for m in hooked:
            stack.enter_context(align_module_device(m, torch.device("cpu")))
        yield module
