"""Student against teacher: held-out agreement, benchmarks, size, measured speed and memory, completions.

`measure_against(...)` is what `distill` and `kdistill eval` both measure while they hold the two models
(`compare(...)`, the dict written as `eval.json`, plus exposure), and `measure_speeds` what they measure
once they have let go of them; `format_table(result)` is what is printed.

    {"heldout": {kl, js, top1_agreement, top10_agreement, ppl_student, ppl_teacher, tokens,
                 kl_by_position, kl_quantiles},        (against the real teacher; "heldout_cache" etc.
                                                        hold the same against another source)
     "teacher": {parameters, size_on_disk_mb, tokens_per_s, ttft_ms, peak_rss_mb, model_rss_mb, ...},
     "student": {...same...},
     "compression": teacher / student parameters, "size_ratio": teacher / student bytes on disk,
     "speedup": student / teacher tokens/s, "ttft_speedup": teacher / student time to first token,
     "memory_ratio": teacher / student model_rss_mb,
     "benchmarks": {task: {kind, metric, n, chance, majority, baseline, teacher: {acc, acc_stderr, ...},
                   student: {...}, retention (None where the teacher is not above the baseline), retention_note}},
     "task_retention": mean over the tasks with a retention, "task_retention_tasks", "task_retention_excluded",
     "prompts": [...], "completions": {"teacher": [...], ...}, "completion_settings": {...}}
"""
from __future__ import annotations

import torch

from kdistill.evaluation.completions import complete, completion_settings, describe
from kdistill.evaluation.exposure import exposure_metrics
from kdistill.evaluation.heldout import heldout_metrics
from kdistill.evaluation.speed import folder_bytes, measure_in_subprocess
from kdistill.evaluation.tasks import retention_summary, run_tasks
from kdistill.models.heads import count_parameters


def _ratio(a, b):
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0 else None


def ratios(teacher: dict, student: dict) -> dict:
    """Teacher-over-student ratios (bigger is better for the student), None where a number is missing."""
    out = {"compression": _ratio(teacher.get("parameters"), student.get("parameters")),
           "size_ratio": _ratio(teacher.get("size_on_disk_mb"), student.get("size_on_disk_mb")),
           "speedup": _ratio(student.get("tokens_per_s"), teacher.get("tokens_per_s")),
           "ttft_speedup": _ratio(teacher.get("ttft_ms"), student.get("ttft_ms")),
           "memory_ratio": _ratio(teacher.get("model_rss_mb"), student.get("model_rss_mb"))}
    return {k: v for k, v in out.items() if v is not None}


def speed_folders(reference, student_dir) -> dict:
    """{"teacher": folder, "student": folder}: what `measure_speeds` loads, without the live models."""
    return {"teacher": reference.folder, "student": student_dir}


def measure_speeds(result: dict, folders: dict, prompts, max_new_tokens: int, device) -> dict:
    """Generation speed and memory of each saved model, each in its own subprocess, into `result[name]`
    (and its ratios). Call it after the caller's own models are freed: a child's memory adds to the
    parent's, so a run that still holds its teacher and student peaks here."""
    for name, folder in folders.items():
        if folder:
            result[name].update(measure_in_subprocess(str(folder), prompts, max_new_tokens,
                                                      device=torch.device(device).type))
    result.update(ratios(result["teacher"], result["student"]))
    return result


def compare(student, reference, batches, device, student_dir, prompts, max_new_tokens: int = 32,
            tasks=None, task_limit: int | None = None, heldout: dict | None = None,
            student_tokenizer=None) -> dict:
    """Every teacher-vs-student number against `reference`, a source's `final_reference` (a live `.model`,
    its `.folder` and `.tokenizer`); `heldout` reuses metrics already measured on `batches`; no `batches`
    (None or []) measures nothing held-out; `tasks` are task files (see `tasks.py`). The student writes its
    completions with `student_tokenizer` (the source's `tokenizer`; default the teacher's) and its folder's
    own generation settings (completions.py). Speeds are `measure_speeds`' (after the caller lets go of
    the models)."""
    teacher, tokenizer = reference.model, reference.tokenizer
    settings = completion_settings(student_dir, max_new_tokens)
    result = {"prompts": prompts, "completions": {}, "completion_settings": settings}
    if batches:
        result["heldout"] = heldout if heldout is not None else heldout_metrics(student, reference, batches, device)
    models = {"teacher": (teacher, reference.folder), "student": (student, student_dir)}
    for name, (model, folder) in models.items():
        result[name] = {"parameters": count_parameters(model), "size_on_disk_mb": folder_bytes(folder) / 2**20
                        if folder else None}
        own = (student_tokenizer or tokenizer) if name == "student" else tokenizer
        result["completions"][name] = complete(model, own, prompts, settings, device)
    result.update(ratios(result["teacher"], result["student"]))
    if tasks:
        bench = run_tasks({"teacher": teacher, "student": student}, tokenizer, list(tasks), device,
                          task_limit, max_new_tokens)
        result["benchmarks"] = bench
        result.update(retention_summary(bench))
    return result


def measure_against(student, source, reference, batches, device, student_dir, cfg, max_new_tokens: int, *,
                    tasks=None, task_limit: int | None = None, heldout: dict | None = None,
                    speed: bool = True) -> tuple[dict, dict]:
    """(eval.json's numbers so far, {"teacher", "student": folder} for `measure_speeds`): the student against
    `reference` (`source.final_reference(...)`) on the held-out `batches` (`source.collate`d), measured
    while both models are held: `compare`, then exposure (each model grades the other's samples) where the
    reference can score new text. `cfg` gives the prompts, the rollout's prompt length, seq_len and seed;
    `speed=False` leaves the folders out (no speed measurement)."""
    result = compare(student, reference, batches, device, student_dir, cfg.eval.prompts, max_new_tokens,
                     tasks=tasks, task_limit=task_limit, heldout=heldout, student_tokenizer=source.tokenizer)
    if batches and reference.can_score_new_text:
        result["exposure"] = exposure_metrics(student, reference.model, batches, source.tokenizer, device,
                                              max_new_tokens, cfg.rollout.prompt_tokens, cfg.train.seq_len,
                                              cfg.train.seed)
    return result, speed_folders(reference, student_dir) if speed else {}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


EFFICIENCY_ROWS = [("parameters", "parameters"), ("size on disk (MB)", "size_on_disk_mb"),
                   ("generation tokens/s", "tokens_per_s"), ("time to first token (ms)", "ttft_ms"),
                   ("peak memory (MB RSS)", "peak_rss_mb"), ("model memory (MB RSS)", "model_rss_mb"),
                   ("peak GPU memory (MB)", "peak_gpu_mb")]
RATIO_LABELS = [("compression", "compression"), ("size_ratio", "smaller on disk"), ("speedup", "speed-up"),
                ("ttft_speedup", "first-token speed-up"), ("memory_ratio", "less memory")]


def score_text(scores: dict, metric: str) -> str:
    """'62.5% ±8.1' (score and its standard error in points)."""
    se = scores.get(f"{metric}_stderr")
    return _pct(scores.get(metric)) + ("" if se is None else f" ±{100 * se:.1f}")


def benchmark_lines(benchmarks: dict) -> list[str]:
    lines = [f"{'benchmark':28s}{'teacher':>16s}{'student':>16s}{'baseline':>10s}{'task retention':>16s}"]
    notes = []
    for name, b in benchmarks.items():
        m = b["metric"]
        ret = b.get("retention")
        lines.append(f"{(name + ' ' + m + ' (n=' + str(b['n']) + ')'):28s}{score_text(b['teacher'], m):>16s}"
                     f"{score_text(b['student'], m):>16s}{_pct(b.get('baseline')):>10s}"
                     f"{(_pct(ret) if ret is not None else 'n/a'):>16s}")
        if ret is None and b.get("retention_note"):
            notes.append(f"  {name}: {b['retention_note']}")
    return lines + notes


def heldout_lines(h: dict, against: str = "teacher") -> list[str]:
    what = f"KL({against}||student), T=1" + (", against the cache's stored distribution (top-k + rest)"
                                              if against == "cache" else "")
    lines = [f"{what}: {h['kl']:.3f} nats/token over {h['tokens']:,} held-out tokens"
             + (f"   JS: {h['js']:.3f}" if "js" in h else ""),
             f"top-1 agreement: {_pct(h['top1_agreement'])}"
             + (f"   top-10 agreement: {_pct(h['top10_agreement'])}" if "top10_agreement" in h else "")]
    if "bpb_student" in h:  # another tokenizer: measured per aligned group and per byte (cross_metrics)
        lines[0] = lines[0].replace("nats/token", "nats/group").replace("tokens", "student tokens", 1)
        lines.append(f"bits per byte: teacher {h['bpb_teacher']:.3f}   student {h['bpb_student']:.3f}   "
                     f"over {h['bytes']:,} bytes, {h['groups']:,} aligned groups")
    if "kl_quantiles" in h:
        lines.append("per-token KL: " + "  ".join(f"{k} {v:.3f}" for k, v in h["kl_quantiles"].items()))
    return lines


def retention_line(result: dict) -> str:
    """The mean task retention and which tasks it is over."""
    kept = result.get("task_retention_tasks") or []
    if result.get("task_retention") is None:
        return "mean task retention: n/a (the teacher beats the baseline on no task)"
    left = len(result.get("task_retention_excluded") or {})
    return (f"mean task retention (student / teacher score): {_pct(result['task_retention'])} over {len(kept)} "
            f"task{'s' if len(kept) != 1 else ''}" + (f"; {left} left out (teacher not above baseline)" if left else ""))


def format_table(result: dict) -> str:
    """The printed comparison: efficiency rows, held-out metrics against each reference, completions."""
    t, s = result.get("teacher", {}), result.get("student", {})
    lines = [f"{'':28s}{'teacher':>16s}{'student':>16s}"]
    if "heldout" in result:
        h = result["heldout"]
        lines.append(f"{'perplexity (held-out)':28s}{_fmt(h['ppl_teacher']):>16s}{_fmt(h['ppl_student']):>16s}")
    for label, key in EFFICIENCY_ROWS:
        if key in t or key in s:
            lines.append(f"{label:28s}{_fmt(t.get(key)):>16s}{_fmt(s.get(key)):>16s}")
    if "error" in t or "error" in s:
        lines.append(f"speed measurement failed: {t.get('error') or s.get('error')}")
    for key in sorted(k for k in result if k == "heldout" or k.startswith("heldout_")
                      and not k.endswith("start") and k != "heldout_data"):
        lines += heldout_lines(result[key], "teacher" if key == "heldout" else key[len("heldout_"):])
    ratio_line = "   ".join(f"{label}: {result[key]:.2f}x" for key, label in RATIO_LABELS if key in result)
    if ratio_line:
        lines.append(ratio_line)
    if result.get("benchmarks"):
        lines += [""] + benchmark_lines(result["benchmarks"])
        lines.append(retention_line(result))
    lines.append("")
    if result.get("prompts") and result.get("completion_settings"):
        lines.append(f"completions: {describe(result['completion_settings'])}")
    for i, p in enumerate(result.get("prompts", [])):
        lines.append(f"prompt: {p!r}")
        for name in ("teacher", "student"):
            text = result["completions"][name][i].replace("\n", " ")
            lines.append(f"  {name:8s}| {text}")
    return "\n".join(lines)
