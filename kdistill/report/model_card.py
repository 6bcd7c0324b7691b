"""`student/README.md`: a Hugging Face model card for every student and every export.

    write_student_card(cfg, run_dir, result, teacher_dtype)   # RUN/student/README.md, after eval.json
    write_export_card(model_dir, out, label, report)          # OUT/README.md (or OUT.README.md for a .gguf)

The YAML metadata (base_model = the teacher, library_name, tags, pipeline_tag) is what the Hub reads;
the body says what the teacher was and at what precision, the data, the whole config, the
teacher-vs-student table, the held-out metrics, the seed prompts' completions and the command that
reproduces the run. `huggingface_hub.ModelCard.load(path)` reads it back.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from kdistill.base import fsutil
from kdistill.config.schema import dump

DEFAULT_TEACHER = "HuggingFaceTB/SmolLM2-135M-Instruct"  # teacher.model=default (kdistill/models/teacher.py)
ROWS = [("parameters", "parameters"), ("size on disk (MB)", "size_on_disk_mb"),
        ("generation tokens/s", "tokens_per_s"), ("time to first token (ms)", "ttft_ms"),
        ("peak memory (MB RSS)", "peak_rss_mb"), ("peak GPU memory (MB)", "peak_gpu_mb")]
HELDOUT = [("KL(teacher‖student), nats/token", "kl"), ("JS divergence", "js"), ("top-1 agreement", "top1_agreement"),
           ("top-10 agreement", "top10_agreement"), ("perplexity, student", "ppl_student"),
           ("perplexity, teacher", "ppl_teacher"), ("held-out tokens", "tokens")]


def base_model(spec: str) -> str:
    return DEFAULT_TEACHER if spec == "default" else spec


def metadata(teacher_spec: str) -> dict:
    return {"base_model": base_model(teacher_spec), "library_name": "transformers",
            "tags": ["kdistill", "distillation"], "pipeline_tag": "text-generation"}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 1000 else f"{v:,.0f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def comparison_table(result: dict) -> list[str]:
    t, s = result.get("teacher", {}), result.get("student", {})
    lines = ["| | teacher | student |", "|---|---|---|"]
    lines += [f"| {label} | {_fmt(t.get(key))} | {_fmt(s.get(key))} |" for label, key in ROWS if key in t or key in s]
    return lines


def heldout_table(result: dict) -> list[str]:
    keys = sorted(k for k in result if k == "heldout" or k.startswith("heldout_") and not k.endswith("_start"))
    lines = []
    for key in keys:
        against = "the teacher" if key == "heldout" else key[len("heldout_"):]
        h = result[key]
        lines += ["", f"Against {against} (`{key}` in eval.json):", "", "| metric | value |", "|---|---|"]
        lines += [f"| {label} | {_pct(h[k]) if 'agreement' in k else _fmt(h[k])} |" for label, k in HELDOUT if k in h]
        start = result.get(f"{key}_start")
        if start:
            lines.append(f"| KL before training | {_fmt(start.get('kl'))} |")
    return lines


def completions(result: dict) -> list[str]:
    done = result.get("completions", {})
    if not result.get("prompts") or "student" not in done:
        return []
    lines = ["", "## Seed prompts (greedy)", "", "| prompt | teacher | student |", "|---|---|---|"]
    for i, p in enumerate(result["prompts"]):
        t = done.get("teacher", ["-"] * len(result["prompts"]))[i]
        lines.append(f"| {_cell(p)} | {_cell(t)} | {_cell(done['student'][i])} |")
    return lines


def data_line(cfg) -> str:
    held = f"{cfg.data.heldout_fraction:.0%} held out"
    if cfg.data.path:
        return f"`{cfg.data.path}` (format {cfg.data.format}, {held})"
    g = cfg.data.generate
    return (f"written by the teacher itself: {g.num_samples} samples of up to {g.max_new_tokens} tokens, "
            f"seed {g.seed} ({held})")


def tokens_line(cfg) -> str:
    t = cfg.train
    accum = f" x {t.grad_accum} accumulated" if t.grad_accum > 1 else ""
    return (f"training: {t.max_steps} steps x {t.batch_size} sequences{accum} x {t.seq_len} tokens = "
            f"{t.max_steps * t.batch_size * t.grad_accum * t.seq_len:,} tokens, lr {t.lr}")


def render(text_meta: dict, body: list[str]) -> str:
    return "---\n" + yaml.safe_dump(text_meta, sort_keys=False) + "---\n\n" + "\n".join(body).rstrip() + "\n"


def student_card(cfg, result: dict, teacher_dtype: str, run_dir: Path) -> str:
    """The card text for a distilled student (`result` is what eval.json holds)."""
    t = cfg.teacher
    n_s, n_t = result.get("student", {}).get("parameters"), result.get("teacher", {}).get("parameters")
    smaller = f", {n_t / n_s:.2f}x smaller than its teacher" if n_s and n_t else ""
    teachers = ", ".join(e.get("model", e.get("kind", "?")) for e in t.sources) if t.sources else t.model
    precision = f"{teacher_dtype}, weights held {t.load_in}" + (f", from the cache {t.cache}" if t.cache else "")
    body = [f"# {run_dir.name}: a student distilled from {base_model(t.model)}", "",
            f"A {cfg.student.kind} student of {_fmt(n_s)} parameters{smaller}, distilled with "
            "kdistill (knowledge distillation: the student learns the teacher's next-token distribution).", "",
            "## Teacher", "", f"- model: `{teachers}`", f"- precision: {precision}", "",
            "## Data", "", f"- {data_line(cfg)}", f"- {tokens_line(cfg)}", "",
            "## Teacher vs student", "", *comparison_table(result), "", "## Held-out metrics", *heldout_table(result),
            *completions(result), "",
            "## Configuration", "", "```yaml", dump(cfg).rstrip(), "```", "",
            "## Reproduce", "", "Save the configuration above as `config.yaml`, then:", "", "```bash",
            "kdistill distill --config config.yaml", "```", "",
            "Load the student with `AutoModelForCausalLM.from_pretrained(\"PATH/TO/student\")`."]
    return render(metadata(t.model), body)


def write_student_card(cfg, run_dir: Path, result: dict, teacher_dtype: str | None = None) -> Path:
    """Write RUN/student/README.md; returns its path."""
    path = Path(run_dir) / "student" / "README.md"
    dtype = str(teacher_dtype or cfg.teacher.dtype).replace("torch.", "")
    fsutil.write_text(path, student_card(cfg, result, dtype, Path(run_dir)))
    return path


def _source_card(model_dir: Path) -> tuple[dict, str]:
    """(metadata, body) of the student's own card, or a minimal one when it has none."""
    path = model_dir / "README.md"
    if path.is_file() and path.read_text().startswith("---\n"):
        head, _, body = path.read_text()[4:].partition("\n---\n")
        meta = yaml.safe_load(head)
        if isinstance(meta, dict):
            return meta, body.strip()
    meta = {"library_name": "transformers", "tags": ["kdistill", "distillation"], "pipeline_tag": "text-generation"}
    return meta, f"# {model_dir.resolve().name}\n\nA student distilled with kdistill."


def export_card(model_dir: Path, out: Path, label: str, report: dict | None) -> str:
    meta, body = _source_card(Path(model_dir))
    meta = {**meta, "tags": list(dict.fromkeys([*meta.get("tags", []), "kdistill", "quantized"]))}
    lines = [f"# {out.name}: {label} export of {Path(model_dir).resolve().name}", "",
             f"Exported from `{model_dir}` with `kdistill export` ({label})."]
    if report is not None:
        lines += ["", "| measured against the fp32 student | value |", "|---|---|",
                  f"| size | {report['bytes_after'] / 1e6:.2f} MB (fp32 {report['bytes_before'] / 1e6:.2f} MB) |",
                  f"| KL(fp32 ‖ export), mean nats/token | {report['kl_mean']:.3e} |",
                  f"| top-1 agreement | {100 * report['top1_agreement']:.2f}% |"]
    lines += ["", "## The student it was exported from", "", body.replace("\n# ", "\n### ", 1).lstrip("# ")]
    return render(meta, lines)


def write_export_card(model_dir, out: Path, label: str, report: dict | None) -> Path:
    """OUT/README.md for a folder export, OUT_STEM.README.md beside a .gguf file; returns its path."""
    out = Path(out)
    path = out / "README.md" if out.is_dir() else out.with_name(out.stem + ".README.md")
    fsutil.write_text(path, export_card(Path(model_dir), out, label, report))
    return path
