"""Saving and loading int8/int4 students: safetensors plus a JSON description, never pickle.

A quantised student is worth keeping on disk: quantising is cheap, but a folder you can copy to the
machine that serves the model, and load there in a second without the float checkpoint, is what a
deployment needs. The folder holds

    config.json               the model's own HF config (unchanged)
    quant_config.json         scheme, group size, and every quantised layer's shape, so the loader can
                              rebuild the modules before reading the weights
    quantized.safetensors     codes, scales and the float tensors (norms), each stored once
    tokenizer files           when a tokenizer is given

The weights file is deliberately not called `model.safetensors`: `AutoModelForCausalLM.from_pretrained`
would otherwise load the float parts, find no `weight` for each linear layer and initialise it at random,
only warning. Here it fails instead, saying there is no model file; use `load_quantized(dir)`. For
llama.cpp and other runtimes the on-disk quantised format is GGUF (`export_gguf`).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .. import fsutil
from ..errors import ModelError
from ..model_files import check_remote_code
from .files import default_mode
from .quantize import QuantEmbedding, QuantLinear

FORMAT = "kdistill-weight-only"
WEIGHTS = "quantized.safetensors"
CONFIG = "quant_config.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def describe(model: nn.Module) -> dict:
    """The quant config: quantised layers, embeddings over them, and modules that alias another."""
    if not hasattr(model, "kdistill_quantization"):
        raise ModelError("save_quantized needs a model returned by quantize_model (or load_quantized)")
    layers, embeddings, aliases, owner = {}, [], {}, {}
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, QuantEmbedding):
            embeddings.append(name)
        if not isinstance(module, QuantLinear):
            continue
        if id(module) in owner:
            aliases[name] = owner[id(module)]
            continue
        owner[id(module)] = name
        layers[name] = {"scheme": module.scheme, "in_features": module.in_features,
                        "out_features": module.out_features, "bias": module.bias is not None,
                        "dtype": str(module.compute_dtype).split(".")[-1]}
    return {"format": FORMAT, "version": 1, **model.kdistill_quantization, "weights": WEIGHTS,
            "layers": layers, "embedding_modules": embeddings, "aliases": aliases}


def unique_state(model: nn.Module) -> tuple[dict, dict]:
    """The state dict with every tensor once, and `{dropped name: kept name}` for the repeats."""
    state, shared, seen = {}, {}, {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)
        if key in seen:
            shared[name] = seen[key]
            continue
        seen[key] = name
        state[name] = tensor.detach().contiguous()
    return state, shared


def save_quantized(model: nn.Module, out_dir, tokenizer=None) -> Path:
    """Write a quantised model (and tokenizer) as a folder; it appears only when complete."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    qc = describe(model)
    state, shared = unique_state(model)
    qc["shared_tensors"] = shared
    with fsutil.atomic_dir(out_dir) as tmp:
        model.config.save_pretrained(tmp)
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt", "quantization": FORMAT})
        fsutil.write_json(tmp / CONFIG, qc)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for path in [tmp, *tmp.iterdir()]:  # temporary names are private (0600); give the usual modes
            default_mode(path)
    return out_dir


def rebuild(model: nn.Module, qc: dict) -> nn.Module:
    """Swap in empty quantised modules of the recorded shapes (the weights are loaded next)."""
    def layer(name):
        spec = qc["layers"][name]
        return QuantLinear(spec["in_features"], spec["out_features"], spec["scheme"], qc["group_size"],
                           spec["bias"], DTYPES[spec["dtype"]])

    tables = {f"{name}.table" for name in qc["embedding_modules"]}
    for name in qc["embedding_modules"]:
        padding_idx = getattr(model.get_submodule(name), "padding_idx", None)
        model.set_submodule(name, QuantEmbedding(layer(f"{name}.table"), padding_idx))
    for name in qc["layers"]:
        if name not in tables:
            model.set_submodule(name, layer(name))
    for name, target in qc["aliases"].items():
        model.set_submodule(name, model.get_submodule(target))
    return model


def read_quant_config(model_dir: Path) -> dict:
    path = model_dir / CONFIG
    if not path.is_file():
        raise ModelError(f"{model_dir}: no {CONFIG}; this is not a folder written by save_quantized "
                         "(`kdistill export --format int8|int4`). A plain HF folder loads with from_pretrained")
    qc = json.loads(path.read_text())
    if qc.get("format") != FORMAT or qc.get("version") != 1:
        raise ModelError(f"{path}: format {qc.get('format')!r} version {qc.get('version')!r} is not "
                         f"{FORMAT!r} version 1; re-export it with this kdistill version")
    return qc


def load_quantized(model_dir) -> nn.Module:
    """Load a folder written by `save_quantized`: the quantised model, in eval mode, on CPU."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    model_dir = Path(model_dir)
    qc = read_quant_config(model_dir)
    check_remote_code(model_dir, False, "quantised model")
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir, trust_remote_code=False))
    model = rebuild(model, qc)
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
