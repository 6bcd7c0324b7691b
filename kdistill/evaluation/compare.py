"""Student against teacher: held-out agreement, size, measured speed and memory, seed-prompt completions.

`compare(...)` returns the dict written as `eval.json`; `format_table(result)` is what is printed.
"""
from __future__ import annotations

import torch

from ..students.llama import count_parameters
from .heldout import heldout_metrics
from .speed import folder_bytes, measure_in_subprocess


@torch.no_grad()
def complete(model, tokenizer, prompts: list[str], max_new_tokens: int, device) -> list[str]:
    """Greedy completions with a mild repetition penalty, identical settings for every model."""
    out = []
    for p in prompts:
        enc = tokenizer(p, return_tensors="pt").to(device)
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=1.2,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        out.append(tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


def compare(student, teacher, tokenizer, batches, device, student_dir, teacher_dir, prompts,
            max_new_tokens: int = 32, measure_speed: bool = True) -> dict:
    held = heldout_metrics(student, teacher, batches, device)
    models = {"teacher": (teacher, teacher_dir), "student": (student, student_dir)}
    result = {"heldout": held, "prompts": prompts, "completions": {}}
    for name, (model, folder) in models.items():
        info = {"parameters": count_parameters(model), "size_on_disk_mb": folder_bytes(folder) / 2**20
                if folder else None}
        if measure_speed and folder:
            info.update(measure_in_subprocess(str(folder), prompts, max_new_tokens))
        result[name] = info
        result["completions"][name] = complete(model, tokenizer, prompts, max_new_tokens, device)
    s, t = result["student"], result["teacher"]
    result["compression"] = t["parameters"] / s["parameters"]
    if "tokens_per_s" in s and "tokens_per_s" in t:
        result["speedup"] = s["tokens_per_s"] / t["tokens_per_s"]
    return result


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def format_table(result: dict) -> str:
    h = result["heldout"]
    rows = [("parameters", "parameters"), ("size on disk (MB)", "size_on_disk_mb"),
            ("generation tokens/s", "tokens_per_s"), ("time to first token (ms)", "ttft_ms"),
            ("peak memory (MB RSS)", "peak_rss_mb")]
    lines = [f"{'':28s}{'teacher':>16s}{'student':>16s}",
             f"{'perplexity (held-out)':28s}{_fmt(h['ppl_teacher']):>16s}{_fmt(h['ppl_student']):>16s}"]
    for label, key in rows:
        lines.append(f"{label:28s}{_fmt(result['teacher'].get(key)):>16s}{_fmt(result['student'].get(key)):>16s}")
    lines += [f"KL(teacher||student), T=1: {h['kl']:.3f} nats/token over {h['tokens']:,} held-out tokens",
              f"top-1 agreement: {100 * h['top1_agreement']:.1f}%   compression: {result['compression']:.2f}x"
              + (f"   speed-up: {result['speedup']:.2f}x" if "speedup" in result else ""), ""]
    for i, p in enumerate(result["prompts"]):
        lines.append(f"prompt: {p!r}")
        for name in ("teacher", "student"):
            text = result["completions"][name][i].replace("\n", " ")
            lines.append(f"  {name:8s}| {text}")
    return "\n".join(lines)
