"""Saving and loading int8/int4 students as compressed-tensors folders: safetensors, never pickle.

A quantised student is worth keeping on disk: a folder you can copy to the machine that serves the
model and load there without the float checkpoint. The folder holds

    config.json               the model's HF config plus a `quantization_config` (ct_format.py)
    model.safetensors         per quantised layer its codes and scales under compressed-tensors' names,
                              the float tensors (norms, biases) as usual; a tied output head stores
                              only its `weight_scale` (its int8 matrix is the embedding's)
    kdistill_quantization.json  how the scheme was chosen (candidates and their measured KL)
    generation_config.json, tokenizer files

Two ways to load it, giving the same logits (tests/export/test_hf_load.py):
- `AutoModelForCausalLM.from_pretrained(folder)` with `pip install compressed-tensors` (the `quant`
  extra): transformers decompresses the weights to float on the first forward;
- `load_quantized(folder)`, here, with no extra package: the layers stay quantised in memory.
Without compressed-tensors, from_pretrained refuses the folder with an ImportError naming the package,
never loading random weights. Folders of the earlier kdistill format (`quant_config.json`) still load
with `load_quantized` (`legacy.py`).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from kdistill.base import fsutil
from kdistill.base.errors import ModelError
from kdistill.export import legacy
from kdistill.export.ct_format import layer_plan, quantization_config
from kdistill.export.files import default_mode
from kdistill.export.quantize import QuantEmbedding, QuantLinear
from kdistill.models.files import check_remote_code

WEIGHTS = "model.safetensors"
RECORD = "kdistill_quantization.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def quantised_modules(model: nn.Module) -> tuple[dict, dict]:
    """`({name: QuantEmbedding | QuantLinear}, {name of a tied head: name of its embedding})`."""
    found, tied, owner = {}, {}, {}
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, QuantEmbedding):
            found[name] = module
            owner[id(module.table)] = name
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, QuantLinear) and not name.endswith(".table"):
            found[name] = module
            if id(module) in owner:
                tied[name] = owner[id(module)]
    return found, tied


def layer_tensors(name: str, module: nn.Module, tied: bool) -> dict[str, torch.Tensor]:
    """One quantised module's tensors under compressed-tensors' names."""
    layer = module.table if isinstance(module, QuantEmbedding) else module
    out = {f"{name}.weight_scale": layer.scale.clone() if tied else layer.scale}  # a copy: safetensors
    # stores no tensor twice, and transformers wants the head's scale beside the embedding's
    if layer.scheme == "int4":
        out[f"{name}.weight_packed"] = layer.packed
        out[f"{name}.weight_shape"] = torch.tensor([layer.out_features, layer.in_features])
    elif not tied:
        out[f"{name}.weight"] = layer.codes
    if isinstance(layer, QuantLinear) and layer.bias is not None and not isinstance(module, QuantEmbedding):
        out[f"{name}.bias"] = layer.bias.detach()
    return out


def folder_state(model: nn.Module) -> tuple[dict, dict]:
    """(tensors to save, `{module name: scheme}`); ModelError if the model was not quantised here."""
    if not hasattr(model, "kdistill_quantization"):
        raise ModelError("save_quantized needs a model returned by quantize_model (or load_quantized)")
    found, tied = quantised_modules(model)
    state, seen = {}, set()
    for name, module in found.items():
        state.update(layer_tensors(name, module, name in tied))
    for key, tensor in model.state_dict().items():  # the float rest: norms, a float vocabulary
        module_name = key.rsplit(".", 1)[0].removesuffix(".table")
        if module_name in found or tensor.data_ptr() in seen:
            continue  # quantised, or the second name of a tied float matrix (config.json ties it back)
        seen.add(tensor.data_ptr())
        state[key] = tensor
    schemes = {name: (m.table if isinstance(m, QuantEmbedding) else m).scheme for name, m in found.items()}
    return {k: v.detach().contiguous() for k, v in state.items()}, schemes


def save_quantized(model: nn.Module, out_dir, tokenizer=None, record: dict | None = None) -> Path:
    """Write a quantised model (and tokenizer) as a folder; it appears only when complete."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    state, schemes = folder_state(model)
    info = model.kdistill_quantization
    with fsutil.atomic_dir(out_dir) as tmp:
        model.config.save_pretrained(tmp)
        config = json.loads((tmp / "config.json").read_text())
        config["quantization_config"] = quantization_config(schemes, info["group_size"])
        fsutil.write_json(tmp / "config.json", config)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        fsutil.write_json(tmp / RECORD, {**info, **(record or {})})
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for path in [tmp, *tmp.iterdir()]:  # temporary names are private (0600); give the usual modes
            default_mode(path)
    return out_dir


def empty_model(model_dir: Path) -> nn.Module:
    """The float architecture of config.json (random weights, replaced next), without its quant config."""
    from transformers import AutoConfig, AutoModelForCausalLM

    check_remote_code(model_dir, False, "quantised model")
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    dtype = DTYPES.get(str(getattr(config, "dtype", None) or "float32").removeprefix("torch."), torch.float32)
    return AutoModelForCausalLM.from_config(config, dtype=dtype)


def rebuild(model: nn.Module, plan: dict[str, tuple[str, int]]) -> dict[str, str]:
    """Swap in empty quantised modules for `plan`'s layers; returns {our tensor name: folder name}."""
    names, tables = {}, {}
    head = model.get_output_embeddings()
    tied = getattr(model.config, "tie_word_embeddings", False)
    for name, (scheme, group) in plan.items():
        module = model.get_submodule(name)
        if isinstance(module, nn.Embedding):
            table = QuantLinear(module.embedding_dim, module.num_embeddings, scheme, group or 32, False,
                                module.weight.dtype)
            model.set_submodule(name, QuantEmbedding(table, module.padding_idx))
            tables[name] = table
            names.update({f"{name}.table.codes": f"{name}.weight", f"{name}.table.scale": f"{name}.weight_scale"})
    for name, (scheme, group) in plan.items():
        module = model.get_submodule(name)
        if not isinstance(module, nn.Linear):
            continue
        if tied and module is head and tables:
            model.set_submodule(name, next(iter(tables.values())))
            embed = next(iter(tables))
            names.update({f"{name}.codes": f"{embed}.weight", f"{name}.scale": f"{embed}.weight_scale"})
            continue
        layer = QuantLinear(module.in_features, module.out_features, scheme, group or 32, module.bias is not None,
                            module.weight.dtype)
        model.set_submodule(name, layer)
        own = {"int8": ("codes", "weight"), "int4": ("packed", "weight_packed")}[scheme]
        names.update({f"{name}.{own[0]}": f"{name}.{own[1]}", f"{name}.scale": f"{name}.weight_scale"})
    return names


def read_state(model_dir: Path, model: nn.Module, names: dict[str, str], aliases: dict[str, str]) -> dict:
    """The folder's tensors under this model's state-dict names (`names`: quantised tensors, `aliases`:
    the second name of a tied float matrix); ModelError naming the first one missing."""
    from safetensors.torch import load_file

    saved = load_file(str(model_dir / WEIGHTS))
    state = {}
    for key in model.state_dict():
        source = names.get(key, key)
        source = source if source in saved else aliases.get(key, source)
        if source not in saved:
            raise ModelError(f"{model_dir}: {WEIGHTS} has no {source}; the folder is damaged or was edited, "
                             "so export it again")
        state[key] = saved[source]
    return state


def vocab_names(model: nn.Module) -> tuple[dict, dict]:
    """(`{name: module}` of the input embedding and output head, `{head weight: embedding weight}` if tied)."""
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    found = {n: m for n, m in model.named_modules(remove_duplicate=False) if m is embed or m is head}
    by_module = {id(m): n for n, m in found.items()}
    tied = head is not None and embed is not None and head.weight is embed.weight
    return found, ({f"{by_module[id(head)]}.weight": f"{by_module[id(embed)]}.weight"} if tied else {})


def load_quantized(model_dir) -> nn.Module:
    """Load a folder written by `save_quantized` (or by kdistill's earlier format): the quantised
    model, in eval mode, on CPU. No compressed-tensors needed."""
    model_dir = Path(model_dir)
    if legacy.is_v1_folder(model_dir):
        return legacy.load_v1(model_dir, empty_model)
    config_path = model_dir / "config.json"
    qc = json.loads(config_path.read_text()).get("quantization_config") if config_path.is_file() else None
    if not qc:
        raise ModelError(f"{model_dir}: config.json has no quantization_config; this is not a quantised folder "
                         "(`kdistill export --format int8|int4` writes one). A plain HF folder loads with "
                         "from_pretrained")
    model = empty_model(model_dir)
    vocab, aliases = vocab_names(model)
    modules = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))}
    plan = layer_plan(qc, modules, str(config_path))
    names = rebuild(model, plan)
    try:
        model.load_state_dict(read_state(model_dir, model, names, aliases), strict=True)
    except RuntimeError as e:
        raise ModelError(f"{model_dir}: the weights do not match config.json's quantization_config ({e}); "
                         "the folder is damaged or was edited, so export it again") from e
    model.kdistill_quantization = describe_plan(plan, set(vocab), model_dir)
    return model.eval()


def describe_plan(plan: dict, vocab: set, model_dir: Path) -> dict:
    """kdistill_quantization of a loaded folder: scheme, group size, vocabulary, int8 layers, clipping."""
    int4 = sorted({g for s, g in plan.values() if s == "int4"})
    record = model_dir / RECORD
    clip = json.loads(record.read_text()).get("clip", False) if record.is_file() else False
    int8 = sorted(n for n, (s, _) in plan.items() if s == "int8" and n not in vocab) if int4 else []
    return {"scheme": "int4" if int4 else "int8", "group_size": int4[0] if int4 else 32,
            "embeddings": bool(vocab & set(plan)), "clip": clip, "int8_layers": int8}
