"""A pretrained causal LM as the student, trained whole or through LoRA adapters (peft) — seed 003.

`student.model` names the student: a hub id (offline: only one already in the Hugging Face cache), a
model folder, a kdistill run folder (its `student/` is used, e.g. `runs/demo`), or `teacher`: a fresh
full-precision copy of the teacher's own weights (read again from the teacher's folder, so it is
full precision even when the teacher is held in 4 or 8 bits).

The student must read text with the teacher's tokenizer: ids must mean the same tokens. Embedding row
counts may differ (padded vocabularies, e.g. 151936 rows for a 151665-token tokenizer): the training
loop aligns rows. With `student.lora_rank` > 0 only the adapters on `student.lora_targets` train; the
result is saved as the adapter (`OUTPUT_DIR/adapter`) and merged into a plain model (`OUTPUT_DIR/student`).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from kdistill.base.errors import ConfigError, ModelError
from kdistill.models.heads import count_parameters

log = logging.getLogger("kdistill")


def student_folder(spec: str, teacher) -> str:
    """The folder or hub id to load for `student.model`. Raises ModelError for a path that is not there."""
    if spec == "teacher":
        return teacher.name_or_path
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return str(path)
        if (path / "student" / "config.json").is_file():
            return str(path / "student")
        raise ModelError(f"student.model: folder {spec!r} holds no model (no config.json, no student/config.json)")
    if spec.startswith((".", "/", "~", "runs/")) or spec.count("/") > 1 or path.exists():
        hint = " (run `kdistill distill --config configs/demo.yaml` first to make it)" if "runs/" in spec else ""
        raise ModelError(f"student.model: {spec!r} does not exist{hint}; give a model folder, a kdistill run "
                         "folder, a hub id, or `teacher` for a copy of the teacher")
    return spec


def load_model(folder: str, spec: str, trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"student.model: cannot load {spec!r} ({e}). Offline, a hub id works only if it is "
                         "already in the Hugging Face cache; otherwise give a local folder") from e


def check_tokenizer(folder: str, spec: str, model, teacher_tokenizer) -> str:
    """Refuse a student whose tokenizer differs from the teacher's; returns how the check went."""
    from transformers import AutoTokenizer

    rows = model.get_input_embeddings().weight.shape[0]
    if teacher_tokenizer is None:
        return "not checked (no teacher tokenizer given)"
    if rows < len(teacher_tokenizer):
        raise ModelError(f"student.model {spec!r} has {rows} embedding rows but the teacher's tokenizer has "
                         f"{len(teacher_tokenizer)} tokens: the student must use the teacher's tokenizer")
    try:
        own = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError):
        log.warning("student.model %s has no tokenizer to compare; assuming it is the teacher's", spec)
        return "assumed (the student folder has no tokenizer)"
    theirs, mine = teacher_tokenizer.get_vocab(), own.get_vocab()
    if theirs != mine:
        differ = sorted(set(theirs.items()) ^ set(mine.items()), key=lambda kv: kv[1])[:3]
        raise ModelError(f"student.model {spec!r} uses a different tokenizer from the teacher ({len(mine)} vs "
                         f"{len(theirs)} tokens; first differences {differ}). Distillation compares token by "
                         f"token, so pick a student that shares the teacher's tokenizer, or set student.tokenizer={spec} to "
                         "distil across tokenizers (loss kinds hybrid or uld)")
    return "same as the teacher's"


def linear_names(model) -> list[str]:
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})


def add_lora(model, s):
    """Wrap `model` with LoRA adapters on `s.lora_targets`; only the adapters require gradients."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ModelError("student.lora_rank > 0 needs peft: `pip install peft` (or `pip install -e '.[lora]'`)"
                         ) from None
    names = linear_names(model)
    missing = [t for t in s.lora_targets if t not in names]
    if missing:
        raise ConfigError(f"student.lora_targets: {missing} are not linear layers of the student; "
                          f"its linear layers are {names}")
    config = LoraConfig(r=s.lora_rank, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
                        target_modules=list(s.lora_targets), task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def build_pretrained(cfg, teacher, tokenizer=None) -> tuple:
    """Load `student.model`, check its tokenizer, add LoRA if asked. Returns (model, report)."""
    s = cfg.student
    folder = student_folder(s.model, teacher)
    model = load_model(folder, s.model, cfg.teacher.trust_remote_code)
    report = {"kind": "pretrained", "model": s.model, "folder": folder,
              "tokenizer": check_tokenizer(folder, s.model, model, tokenizer) if not s.tokenizer else
              f"its own ({s.tokenizer}): distilled across tokenizers",
              "parameters": count_parameters(model)}
    model.requires_grad_(True)
    if s.lora_rank > 0:
        model = add_lora(model, s)
        report["lora"] = {"rank": s.lora_rank, "alpha": s.lora_alpha, "dropout": s.lora_dropout,
                          "targets": list(s.lora_targets)}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    report["trainable_parameters"] = trainable
    print(f"student {s.model}: {trainable:,} trainable of {count_parameters(model):,} parameters "
          f"({100 * trainable / count_parameters(model):.2f}%"
          f"{', LoRA adapters only' if s.lora_rank > 0 else ', all weights'})", flush=True)
    return model, report


def is_peft(model) -> bool:
    return hasattr(model, "merge_and_unload") and hasattr(model, "peft_config")


def save_adapter_and_merged(model, tokenizer, output_dir: Path, atomic_dir):
    """Write the adapter to OUTPUT_DIR/adapter, merge it, write the plain model to OUTPUT_DIR/student.
    Returns the merged model (the adapter wrapper is gone)."""
    with atomic_dir(output_dir / "adapter") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    merged = model.merge_and_unload()
    with atomic_dir(output_dir / "student") as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return merged
