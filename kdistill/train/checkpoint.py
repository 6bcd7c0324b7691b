"""Checkpoints in HF format, written atomically, checked before a resume, never pickled.

`OUTPUT_DIR/checkpoints/step-000050/` holds the student (`save_pretrained`, safetensors), the tokenizer,
`optimizer.safetensors` (every tensor of the optimizer state), `rng.safetensors` (torch RNG states),
`trainer_state.json` (step, data position, scheduler, optimizer hyper-parameters, Python RNG) and, last,
`checksums.json` (sha256 and size of every other file, each flushed to disk). A folder is built under a
temporary name and renamed when complete, so only complete checkpoints ever carry a `step-*` name; the
oldest are removed only after a newer one is complete. A resume takes the newest checkpoint whose files
still match `checksums.json` (`resume_point`), after the leftovers of a killed write are gone
(`clean_partial`). A checkpoint is good before it is called good: weights, optimizer state and every
other tensor are checked finite before anything is written (`NonFiniteCheckpoint` otherwise, and the
older checkpoints stay). With train.keep_best, `checkpoints/best/` is a checkpoint like the others (its
trainer_state.json's `best` holds the step, the metric's key and value) that rotation and resume ignore.
"""
from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from kdistill.base import fsutil
from kdistill.base.errors import KdistillError
from kdistill.base.outputs import RUN_OWNED
from kdistill.train.debug import all_finite, non_finite

SOURCE_TENSORS = "source.safetensors"
FEATURE_TENSORS = "features.safetensors"  # projections of hidden-state terms (train/features.py), never in student/
STEP_DIR = re.compile(r"^step-(\d+)$")
BEST = "best"  # checkpoints/best: train.keep_best's lowest held-out KL, beside the rotated step-* folders
CHECKSUMS = "checksums.json"
STATE = "trainer_state.json"
SAME_CONFIG = "resume with the config the run was started with"
SET_ASIDE = ("move that checkpoint folder out of checkpoints/ (keep it until the run is fine) and run --resume "
             "again: it resumes from the newest checkpoint that verifies")


class CheckpointError(KdistillError):
    """A checkpoint cannot be read or does not fit this run; the message names the file and the fix."""


def _state_problem(path: Path) -> tuple[dict | None, str | None]:
    """(trainer_state.json as a dict, None) or (None, what is wrong with it)."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "missing (not a complete checkpoint)"
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"not valid JSON ({e}; truncated or damaged)"
    if not isinstance(state, dict):
        return None, f"a JSON {type(state).__name__}, not an object"
    return state, None


def read_state(folder: Path) -> dict:
    """FOLDER/trainer_state.json as a dict; CheckpointError naming the file when it is missing, not valid
    JSON (truncated) or not an object. Every reader of a checkpoint's state comes here."""
    path = Path(folder) / STATE
    state, problem = _state_problem(path)
    if problem:
        raise CheckpointError(f"{path}: {problem}; {SET_ASIDE}")
    return state


def _step(path: Path) -> int:
    return int(STEP_DIR.match(path.name).group(1))


def _step_dirs(output_dir: str | Path) -> list[Path]:
    """Every `step-*` folder, complete or not, oldest first."""
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and STEP_DIR.match(p.name)), key=_step)


def load_source_tensors(path: Path) -> dict:
    """The teacher source's tensors saved with the checkpoint at `path` ({} if it saved none)."""
    f = Path(path) / SOURCE_TENSORS
    return load_file(str(f)) if f.is_file() else {}


def load_feature_tensors(path: Path) -> dict:
    """The feature-term projections saved with the checkpoint at `path` ({} if it saved none)."""
    f = Path(path) / FEATURE_TENSORS
    return load_file(str(f)) if f.is_file() else {}


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    return [p for p in _step_dirs(output_dir) if (p / STATE).is_file()]


def clean_partial(output_dir: str | Path) -> list[Path]:
    """Remove the temporary folders and files a killed write left in OUTPUT_DIR and its checkpoints/ (in
    OUTPUT_DIR only those of the names a run writes, `outputs.RUN_OWNED`: a user's files are never touched).

    Call it holding `fsutil.run_lock(output_dir)` (a live run's temporaries look the same). Returns the
    removed paths for the caller to report; a folder put back from its `.NAME.old` is logged here.
    """
    output_dir = Path(output_dir)
    return fsutil.clean_partial(output_dir / "checkpoints") + fsutil.clean_partial(output_dir, RUN_OWNED)


def write_checksums(folder: Path) -> dict:
    """Write FOLDER/checksums.json: {"files": {relative path: {"sha256", "size"}}}; flushes every file."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS)
    table = {p.relative_to(folder).as_posix(): {"sha256": fsutil.sha256_file(p, fsync=True),
                                                "size": p.stat().st_size} for p in files}
    fsutil.write_json(folder / CHECKSUMS, {"version": 1, "files": table})
    return table


def _file_problem(folder: Path, name: str, want: dict) -> str | None:
    f = folder / name
    if not f.is_file():
        return f"{name} is missing"
    size = f.stat().st_size
    if size < want["size"]:
        return f"{name} is truncated ({size:,} of {want['size']:,} bytes; sha256 mismatch)"
    if size > want["size"]:
        return f"{name} has grown ({size:,} bytes, {want['size']:,} written; sha256 mismatch)"
    if fsutil.sha256_file(f) != want["sha256"]:
        return f"{name} is corrupted (sha256 mismatch at its written size of {size:,} bytes)"
    return None


def _unchecked_problem(folder: Path) -> str | None:
    """For a checkpoint written before checksums.json: its JSON and safetensors files must parse."""
    problem = _state_problem(folder / STATE)[1]
    if problem:
        return f"{STATE} is {problem}"
    tensors = sorted(folder.glob("*.safetensors"))
    if not tensors:
        return "it holds no *.safetensors file"
    for f in tensors:
        try:
            with safe_open(str(f), "pt") as h:
                h.keys()
        except (OSError, SafetensorError) as e:
            return f"{f.name} does not parse ({e}; an older checkpoint without {CHECKSUMS})"
    return None


def checkpoint_problem(folder: Path) -> str | None:
    """What is wrong with the checkpoint in `folder`, or None when every file matches checksums.json."""
    if not (folder / STATE).is_file():
        return f"{STATE} is missing"
    if not (folder / CHECKSUMS).is_file():
        return _unchecked_problem(folder)
    try:
        table = json.loads((folder / CHECKSUMS).read_text())["files"]
        checks = [(str(name), {"sha256": str(w["sha256"]), "size": int(w["size"])}) for name, w in table.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"{CHECKSUMS} does not parse ({type(e).__name__}: {e})"
    for name, want in checks:
        problem = _file_problem(folder, name, want)
        if problem:
            return problem
    return None


def resume_point(output_dir: str | Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint that verifies (None if none does) and one line per newer one skipped, e.g.
    "checkpoints/step-000004: model.safetensors is truncated (...); using step-000002"."""
    skipped = []
    for folder in reversed(_step_dirs(output_dir)):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder, [f"checkpoints/{name}: {why}; using {folder.name}" for name, why in skipped]
        skipped.append((folder.name, problem))
    return None, [f"checkpoints/{name}: {why}; no earlier checkpoint verifies" for name, why in skipped]


def _optimizer_tensors(optimizer, state: dict | None = None) -> tuple[dict, dict]:
    state = state if state is not None else optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, per_param in state["state"].items():
        for name, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _load_optimizer(optimizer, tensors: dict, meta: dict, load=None) -> None:
    state: dict = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    (load or optimizer.load_state_dict)({"state": state, "param_groups": meta["param_groups"]})


class NonFiniteCheckpoint(KdistillError):
    """A tensor to be checkpointed holds NaN or inf: nothing was written, the older checkpoints stay."""


def last_good(output_dir) -> str:
    """The sentence naming the newest checkpoint, every one of which was checked finite when written."""
    found = list_checkpoints(output_dir)
    if not found:
        return "no checkpoint was written before it"
    return f"the last good checkpoint is kept: {found[-1]} (its weights and optimizer state were checked finite)"


def check_finite(step: int, output_dir, groups: dict[str, dict]) -> None:
    """NonFiniteCheckpoint naming the first tensor of `groups` ({"weights": state dict, ...}) that holds
    NaN or inf; one device sync per group when all are finite."""
    for group, tensors in groups.items():
        if tensors and not all_finite(tensors.values()):
            where = non_finite((f"{group} {k}", v) for k, v in tensors.items())
            raise NonFiniteCheckpoint(f"checkpoint step-{step:06d} was not written: {where} is not finite, so "
                                      f"training diverged; {last_good(output_dir)}. Lower train.lr")


def save_checkpoint(output_dir, step: int, model, tokenizer, optimizer, scheduler, extra: dict,
                    keep: int, source_tensors: dict | None = None, optimizer_state: dict | None = None,
                    feature_tensors: dict | None = None, name: str | None = None) -> Path:
    """checkpoints/step-NNNNNN (then the oldest beyond `keep` go), or checkpoints/NAME (`BEST`: never
    rotated, never a resume point) replaced whole."""
    target = Path(output_dir) / "checkpoints" / (name or f"step-{step:06d}")
    tensors, opt_meta = _optimizer_tensors(optimizer, optimizer_state)
    check_finite(step, output_dir, {"weight": model.state_dict(), "optimizer state": tensors,
                                    "teacher source tensor": source_tensors or {},
                                    "feature projection": feature_tensors or {}})
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    with fsutil.atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        save_file(rng, str(tmp / "rng.safetensors"))
        if source_tensors:  # a teacher source's own tensors (an EMA shadow of the student)
            save_file({k: v.detach().contiguous().cpu() for k, v in source_tensors.items()},
                      str(tmp / SOURCE_TENSORS))
        if feature_tensors:
            save_file(feature_tensors, str(tmp / FEATURE_TENSORS))
        state = {"step": step, "optimizer": opt_meta, "scheduler": scheduler.state_dict(),
                 "python_rng": _encode_py_rng(random.getstate()), **extra}
        (tmp / STATE).write_text(json.dumps(state, indent=1))
        write_checksums(tmp)
    # Newer folders come from an attempt that was resumed from earlier: this run rewrites them in turn.
    for old in [p for p in list_checkpoints(output_dir) if _step(p) <= step][:-keep] if name is None else []:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _encode_py_rng(state) -> list:
    return [state[0], list(state[1]), state[2]]


def _weights_problem(model, files: list[Path]) -> str | None:
    """A weight whose name or shape differs between the checkpoint files and `model` ("key: shapes")."""
    params = model.state_dict()
    saved = {}
    for f in files:
        with safe_open(str(f), "pt") as h:
            saved.update({k: list(h.get_slice(k).get_shape()) for k in h.keys()})
    for key, shape in saved.items():
        if key not in params:
            return f"{key}: {shape} in the checkpoint, absent from this config's student"
        if list(params[key].shape) != shape:
            return f"{key}: {shape} in the checkpoint, {list(params[key].shape)} in this config's student"
    stored = {params[k].data_ptr() for k in saved}  # a tied weight (lm_head) is saved once
    for key, t in params.items():
        if key not in saved and t.data_ptr() not in stored:
            return f"{key}: {list(t.shape)} in this config's student, absent from the checkpoint"
    return None


def _load_weights(path: Path, model) -> None:
    from safetensors.torch import load_model

    if hasattr(model, "peft_config"):  # a LoRA student: its checkpoint holds the adapter only
        from peft import set_peft_model_state_dict

        try:
            set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors")))
        except RuntimeError as e:
            raise KdistillError(f"checkpoint {path}: the adapter does not fit this config's student ({e}); "
                                f"{SAME_CONFIG}") from e
        return
    files = sorted(path.glob("model*.safetensors"))
    if not files:
        raise KdistillError(f"checkpoint {path} has no model*.safetensors, so it is not a kdistill checkpoint "
                            "of a full student; resume with the config the run was started with")
    problem = _weights_problem(model, files)
    if problem:
        raise KdistillError(f"checkpoint {path}: the checkpoint's student has other shapes than this "
                            f"config's ({problem}); {SAME_CONFIG}")
    for f in files:
        load_model(model, str(f), strict=False)


def load_weights(path: Path, model) -> dict:
    """The student's weights (a LoRA student's adapter) of the checkpoint at `path` into `model`, after
    its files are checked against checksums.json; returns its trainer_state.json."""
    problem = checkpoint_problem(Path(path))
    if problem:
        raise CheckpointError(f"checkpoint {path}: {problem}; its files changed after they were written")
    _load_weights(Path(path), model)
    return read_state(path)


def _restore(path: Path, model, optimizer, scheduler, load_optimizer=None) -> dict:
    state = read_state(path)
    _load_weights(path, model)
    tensors = load_file(str(path / "optimizer.safetensors"))
    try:
        _load_optimizer(optimizer, tensors, state["optimizer"], load_optimizer)
    except ValueError as e:  # torch: another number of parameter groups or of parameters in a group
        raise KdistillError(f"checkpoint {path}: its optimizer state is for other trainable parameters than "
                            f"this config's student has ({e}); {SAME_CONFIG}") from e
    scheduler.load_state_dict(state["scheduler"])
    rng = load_file(str(path / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    py = state["python_rng"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    return state


def load_checkpoint(path: Path, model, optimizer, scheduler, load_optimizer=None) -> dict:
    """Restore weights, optimizer, scheduler and RNG from `path`; returns trainer_state.json.

    Take `path` from `resume_point`, which has checked the files; an error here says what does not fit.
    """
    try:
        return _restore(Path(path), model, optimizer, scheduler, load_optimizer)
    except KeyError as e:
        raise CheckpointError(f"{Path(path) / STATE}: no {e}, so another kdistill version wrote it; resume with "
                              "the kdistill version that started the run") from e
    except TypeError as e:  # a value of another type than kdistill writes (a list where a dict belongs)
        raise CheckpointError(f"{Path(path) / STATE}: a value of the wrong type ({e}); the file was changed "
                              f"after it was written: {SET_ASIDE}") from e
    except (OSError, ValueError, SafetensorError) as e:
        raise KdistillError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); its files changed "
                            "after they were written. Check the disk (free space, dmesg), then run --resume "
                            "again: it resumes from the newest checkpoint whose files match checksums.json") from e
