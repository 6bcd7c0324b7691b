"""Checks on an HF model folder before transformers touches it: custom code, pickles, damaged weights.

transformers asks "run the custom code? [y/N]" on a terminal, unpickles `pytorch_model.bin` (pickles can
run code), fails on a truncated safetensors file with a Rust error, and loads a config whose architecture
is not a causal LM with a new, random output layer. `check_model_folder` refuses each of these first,
with a ModelError that names the folder and the fix. Every `from_pretrained` in kdistill passes
`trust_remote_code` explicitly (False unless the user opted in), so nothing prompts even for hub ids.

    use_safetensors = check_model_folder(folder, "teacher", trust_remote_code=False, allow_pickle=False)
"""
from __future__ import annotations

import json
from pathlib import Path

from kdistill.base.errors import ModelError

SAFETENSORS_INDEX = "model.safetensors.index.json"
NO_REMOTE_CODE = "kdistill runs only architectures transformers ships (kdistill's students are)"
CONVERT = ("convert it to safetensors (load it once where you trust it and call save_pretrained, which "
           "writes model.safetensors)")
NO_PICKLE = f"kdistill does not unpickle model files here: {CONVERT}"


def read_json(path: Path, what: str) -> dict:
    """A JSON object from `path`; ModelError naming the file when it is not valid JSON."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{what} {path.parent}: cannot read {path.name} ({e}); the folder is damaged, "
                         "save the model again") from None
    if not isinstance(data, dict):
        raise ModelError(f"{what} {path.parent}: {path.name} is not a JSON object; save the model again")
    return data


def model_config(folder, what: str = "model") -> dict:
    """config.json of `folder` as a dict; ModelError when it is missing or unreadable."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ModelError(f"{what} {folder}: no config.json; give a folder written by save_pretrained")
    return read_json(path, what)


def remote_code_files(folder) -> list[str]:
    """The files of `folder` that ask for the model's own code: config/tokenizer_config with `auto_map`."""
    found = []
    for name in ("config.json", "tokenizer_config.json"):
        path = Path(folder) / name
        if path.is_file() and read_json(path, "model").get("auto_map"):
            found.append(name)
    return found


def check_remote_code(folder, trust_remote_code: bool, what: str = "model", fix: str = NO_REMOTE_CODE) -> bool:
    """Refuse a folder that needs its own Python code unless the user opted in.

    Returns True when the folder asks for custom code (and `trust_remote_code` allows it).
    """
    asking = remote_code_files(folder)
    if asking and not trust_remote_code:
        verb = "ask" if len(asking) > 1 else "asks"
        raise ModelError(f"{what} {folder}: {' and '.join(asking)} {verb} to run the model's own Python code "
                         f"(auto_map), which can do anything; {fix}")
    return bool(asking)


def causal_lm_names() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([value] if isinstance(value, str) else value)
    return names


def check_architecture(config: dict, folder, what: str = "model") -> None:
    """Refuse a config transformers cannot load as a causal LM: a missing or unknown `model_type`, one
    with no causal-LM class, or an `architectures` entry that is not a causal LM (AutoModelForCausalLM would
    build the causal LM anyway and give it a new, random output layer)."""
    import transformers
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    model_type = config.get("model_type")
    if not model_type:
        raise ModelError(f"{what} {folder}: config.json has no model_type; save the model with save_pretrained")
    if model_type not in CONFIG_MAPPING:
        code = " (the folder ships .py files: custom code)" if list(Path(folder).glob("*.py")) else ""
        raise ModelError(f"{what} {folder}: model_type {model_type!r}{code} is not an architecture "
                         f"transformers {transformers.__version__} can load; upgrade transformers or give "
                         "another model")
    config_class = CONFIG_MAPPING[model_type]
    if config_class not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ModelError(f"{what} {folder}: model_type {model_type!r} has no causal-LM class in transformers "
                         "(AutoModelForCausalLM cannot load it); give a decoder-only causal language model")
    names = causal_lm_names() | {MODEL_FOR_CAUSAL_LM_MAPPING[config_class].__name__}
    architectures = config.get("architectures") or []
    if architectures and not names.intersection(architectures):
        raise ModelError(f"{what} {folder}: architectures {architectures} (model_type {model_type!r}) is not a "
                         "causal LM; its output layer would be new and random. Give a *ForCausalLM model")


def check_safetensors(path: Path, what: str = "model") -> None:
    """Open the header of one safetensors file: ModelError naming it when truncated or corrupted."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            f.keys()
    except (SafetensorError, OSError) as e:
        raise ModelError(f"{what} {path.parent}: weights file {path} is truncated or corrupted ({e}); "
                         "copy or save the model again") from None


def check_shards(folder: Path, what: str) -> None:
    index = folder / SAFETENSORS_INDEX
    if not index.is_file():
        return
    shards = set(read_json(index, what).get("weight_map", {}).values())
    missing = sorted(s for s in shards if not (folder / s).is_file())
    if missing:
        raise ModelError(f"{what} {folder}: {SAFETENSORS_INDEX} names shards that are missing: "
                         f"{', '.join(missing)}; copy the whole folder again")


def check_weights(folder, allow_pickle: bool = False, what: str = "model",
                  pickle_fix: str = NO_PICKLE) -> bool:
    """Check the weights of `folder`; returns True to load safetensors, False for allowed pickles.

    Raises ModelError for a folder without weights, with only pickled weights (unless `allow_pickle`),
    or with a truncated or corrupted safetensors file.
    """
    folder = Path(folder)
    safetensors = sorted(folder.glob("*.safetensors"))
    pickled = sorted(p.name for p in folder.glob("*.bin") if p.name != "training_args.bin")
    if safetensors:
        for path in safetensors:
            check_safetensors(path, what)
        check_shards(folder, what)
        return True
    if pickled:
        if allow_pickle:
            return False
        raise ModelError(f"{what} {folder}: the weights are only pickled ({', '.join(pickled[:3])}), and "
                         f"unpickling can run code; {pickle_fix}")
    ggufs = sorted(p.name for p in folder.glob("*.gguf"))
    hint = f"; for a GGUF file give the file itself ({ggufs[0]})" if ggufs else ""
    raise ModelError(f"{what} {folder}: no weights (no model.safetensors or shards){hint}; "
                     "give a folder written by save_pretrained")


def check_model_folder(folder, what: str = "model", *, trust_remote_code: bool = False,
                       allow_pickle: bool = False, remote_fix: str = NO_REMOTE_CODE,
                       pickle_fix: str = NO_PICKLE) -> bool:
    """Every check above, in the order a user fixes them; returns `use_safetensors` for from_pretrained."""
    config = model_config(folder, what)
    custom = check_remote_code(folder, trust_remote_code, what, remote_fix)
    if not custom:
        check_architecture(config, folder, what)
    return check_weights(folder, allow_pickle, what, pickle_fix)
