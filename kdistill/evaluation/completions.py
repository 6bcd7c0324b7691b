"""The seed-prompt completions of teacher and student, made with the settings the student folder carries.

Greedy decoding of `max_new_tokens` new tokens, with the `repetition_penalty` and `no_repeat_ngram_size`
of the student's saved generation_config.json (none when it sets none) and nothing else, for teacher and
student alike. So `model.generate(**inputs, max_new_tokens=N)` on the saved student gives the student
column that `eval`, the report and the model card show; the settings are kept in eval.json as
`completion_settings`.
"""
from __future__ import annotations

import json
from pathlib import Path

CARRIED = ("repetition_penalty", "no_repeat_ngram_size")  # generation_config keys that change greedy output


def completion_settings(student_dir, max_new_tokens: int) -> dict:
    """Greedy decoding plus whatever of CARRIED the student's generation_config.json sets."""
    settings = {"do_sample": False, "max_new_tokens": max_new_tokens}
    path = Path(student_dir) / "generation_config.json" if student_dir else None
    if path is not None and path.is_file():
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError:
            saved = {}
        settings.update({k: saved[k] for k in CARRIED if saved.get(k) not in (None, 1.0, 0)})
    return settings


def describe(settings: dict) -> str:
    """'greedy, 32 new tokens, no repetition penalty' (for captions)."""
    extra = [f"{k.replace('_', ' ')} {settings[k]}" for k in CARRIED if k in settings]
    return (f"greedy, {settings.get('max_new_tokens', '?')} new tokens, "
            + (", ".join(extra) if extra else "no repetition penalty")
            + " (the student's generation_config.json)")


def complete(model, tokenizer, prompts: list[str], settings: dict, device) -> list[str]:
    """One completion per prompt with `settings` (from `completion_settings`)."""
    import torch  # here, so that the report can describe settings without importing torch

    out = []
    with torch.no_grad():
        for p in prompts:
            enc = tokenizer(p, return_tensors="pt").to(device)
            ids = model.generate(**enc, **settings, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            out.append(tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return out
