"""Checkpoints in HF format, written atomically, resumable after kill -9, never pickled.

`OUTPUT_DIR/checkpoints/step-000050/` holds the student (`save_pretrained`, safetensors), the tokenizer,
`optimizer.safetensors` (every tensor of the optimizer state), `rng.safetensors` (torch RNG states) and
`trainer_state.json` (step, data position, scheduler, optimizer hyper-parameters, Python RNG). A folder
is built under a temporary name and renamed when complete, so only complete checkpoints ever carry a
`step-*` name; the oldest are removed only after a newer one is complete.
"""
from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .. import fsutil
from ..errors import KdistillError

STEP_DIR = re.compile(r"^step-(\d+)$")


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and STEP_DIR.match(p.name)
             and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def _optimizer_tensors(optimizer) -> tuple[dict, dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, per_param in state["state"].items():
        for name, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _load_optimizer(optimizer, tensors: dict, meta: dict) -> None:
    state: dict = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(output_dir, step: int, model, tokenizer, optimizer, scheduler, extra: dict,
                    keep: int) -> Path:
    target = Path(output_dir) / "checkpoints" / f"step-{step:06d}"
    tensors, opt_meta = _optimizer_tensors(optimizer)
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    with fsutil.atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        save_file(rng, str(tmp / "rng.safetensors"))
        state = {"step": step, "optimizer": opt_meta, "scheduler": scheduler.state_dict(),
                 "python_rng": _encode_py_rng(random.getstate()), **extra}
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _encode_py_rng(state) -> list:
    return [state[0], list(state[1]), state[2]]


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    """Restore weights, optimizer, scheduler and RNG from `path`; returns trainer_state.json."""
    from safetensors.torch import load_model

    try:
        state = json.loads((path / "trainer_state.json").read_text())
        if hasattr(model, "peft_config"):  # a LoRA student: its checkpoint holds the adapter only
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors")))
        else:
            model_files = sorted(path.glob("model*.safetensors"))
            if not model_files:
                raise KdistillError(f"checkpoint {path} has no model*.safetensors")
            for f in model_files:
                load_model(model, str(f), strict=False)
        _load_optimizer(optimizer, load_file(str(path / "optimizer.safetensors")), state["optimizer"])
    except (OSError, ValueError, KeyError) as e:
        raise KdistillError(f"checkpoint {path} is unreadable ({e}); delete it to resume from an "
                            "earlier one") from e
    scheduler.load_state_dict(state["scheduler"])
    rng = load_file(str(path / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    py = state["python_rng"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    return state
