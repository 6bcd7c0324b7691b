"""The Python API: what each `kdistill` command does, as a function with typed parameters.

    from kdistill import distill, evaluate, export, load_config
    result = distill(load_config("configs/demo.yaml", ["train.max_steps=20", "output_dir=runs/quick"]))
    result["heldout"]["kl"]                                        # = runs/quick/eval.json
    evaluate("runs/quick/student", "default", data="notes.txt")["heldout"]["kl"]
    export("runs/quick/student", "gguf", "Q8_0", "student.gguf")["report"]["kl_mean"]

The commands (kdistill/commands/) parse their arguments and call these. The loss on its own, for another
trainer's `compute_loss`, is `kdistill.losses.build_objective` (docs/losses.md). `import kdistill` stays
light: this module loads no torch; each function imports what it needs on first use.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from kdistill.config.schema import Config, validate
from kdistill.config.schema import load_config as _load_config


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """The run configuration: defaults, then the YAML file at `path` (stating only what differs), then
    `key.path=value` overrides. Unknown keys are errors naming the nearest valid one, values are coerced
    to each field's type; `kdistill config show` lists every key with its meaning."""
    return _load_config(path, list(overrides))


def _config(config: Config | str | Path | None, overrides: list[str]) -> Config:
    if isinstance(config, Config):
        if overrides:
            raise ValueError("overrides apply to a config file; with a Config, set its fields instead")
        validate(config)  # a Config built in code gets the range checks load_config makes
        return config
    return load_config(config, list(overrides))


def distill(config: Config | str | Path, overrides: list[str] = (), resume: bool = False,
            overwrite: bool = False, accept_changed_data: bool = False) -> dict:
    """Distill a teacher into a student, as `kdistill distill`; returns the dict written as OUTPUT_DIR/eval.json.

    `config` is a Config (from `load_config`) or a YAML file, `overrides` `key.path=value` strings. The run
    writes OUTPUT_DIR/student (with its model card README.md), eval.json, metrics.jsonl, config.yaml and
    kdistill.log. Raises KdistillError for bad input (before anything is touched when the config shows it)."""
    from kdistill.run.distill import distill as run

    return run(_config(config, overrides), resume=resume, overwrite=overwrite, accept_changed_data=accept_changed_data)


def plan(config: Config | str | Path, overrides: list[str] = (), resume: bool = False,
         overwrite: bool = False) -> list[str]:
    """What `distill` would do, as `kdistill distill --dry-run` prints it: every check that needs no model,
    then the teacher, data, student, loss terms and output folder; touches nothing, loads no model."""
    from kdistill.run.plan import describe

    return describe(_config(config, overrides), resume=resume, overwrite=overwrite)


def cache(config: Config | str | Path, overrides: list[str] = (), overwrite: bool = False) -> dict:
    """Run the teacher once over the data and write its signal to `cache.out`, as `kdistill cache`;
    returns the cache's manifest (shards, positions, bytes per token, what the stored signal loses)."""
    from kdistill.run.cache import write_cache

    return write_cache(_config(config, overrides), overwrite=overwrite)


def inspect_cache(folder: str | Path) -> dict:
    """What a cache folder holds, each shard verified, as `kdistill cache --inspect`."""
    from kdistill.cache.inspect import summary

    return summary(str(folder))


def generate(model: str | Path, prompts: list[str], max_new_tokens: int = 48, temperature: float = 0.0,
             chat: bool = False) -> list[str]:
    """Complete each prompt with a model folder, an int8/int4 export or a .gguf file, as `kdistill generate`;
    `chat` wraps each prompt as a user message in the tokenizer's chat template."""
    from kdistill.export.complete import complete, load_for_generation

    loaded, tokenizer = load_for_generation(str(model), chat)  # once for all prompts
    return [complete(loaded, tokenizer, p, max_new_tokens, temperature, chat=chat) for p in prompts]


def evaluate(student: str | Path | None = None, teacher: str | None = None, data: str | Path | None = None, *,
             run: str | Path | None = None, tasks: list[str] = (), seq_len: int = 128, batches: int = 8,
             limit: int | None = None, max_new_tokens: int | None = None, measure_speed: bool = True,
             heldout: bool = True, out: str | Path | None = None, lm_eval_dir: str | Path | None = None,
             teacher_server: str | None = None, server_model: str | None = None,
             server_api: str | None = None, force: bool = False) -> dict:
    """Compare a student folder with its teacher, as `kdistill eval`; returns the result dict.

    Give `student` and `teacher` (hub id, folder, .gguf file or 'default'), with `data` a held-out file
    (else the teacher writes evaluation data), or `run` (a `kdistill distill` output folder: its student,
    teacher and held-out split; the result is merged into RUN/eval.json and that file is returned). `tasks`
    are benchmark files (JSONL, BIG-bench task.json or lm-eval YAML; kdistill/data/task_files.py);
    `heldout=False` measures no held-out text (tasks, sizes, speed). With `out` the result is also merged
    into that file (earlier measurements there are kept; a file that holds no eval result, or an `lm_eval_dir`
holding other files, is replaced only with `force`, never an input or a run's own file). `teacher_server` (a vLLM or SGLang URL) measures the
    held-out numbers against the teacher on that server (`teacher` gives its tokenizer)."""
    from kdistill.run.evaluate import EvalSettings, run_eval

    with tempfile.TemporaryDirectory(prefix="kdistill-eval-") as tmp:
        target = Path(out) if out else None if run else Path(tmp) / "eval.json"
        run_eval(EvalSettings(run=str(run) if run else None, student=str(student) if student else None,
                              teacher=teacher, data=str(data) if data else None, seq_len=seq_len, batches=batches,
                              tasks=[str(t) for t in tasks] or None, limit=limit, max_new_tokens=max_new_tokens,
                              no_speed=not measure_speed, no_heldout=not heldout,
                              lm_eval_dir=str(lm_eval_dir) if lm_eval_dir else None,
                              out=str(target) if target else None, teacher_server=teacher_server,
                              server_model=server_model, server_api=server_api, force=force))
        return json.loads((target or Path(run) / "eval.json").read_text())


def report(runs: list[str | Path], out: str | Path | None = None, min_retention: float = 0.9,
           title: str = "kdistill report", force: bool = False) -> dict:
    """report.html (self-contained), report.md and its figures for one or more runs, as `kdistill report`;
    returns {"html", "markdown", "images"} paths. `out` defaults to RUN/report (one run) or the runs'
    common parent /report; a report written there before is refreshed, anything else is replaced only
    with `force` (never a run folder)."""
    from kdistill.report.build import build_report

    return build_report([str(r) for r in runs], out, min_retention, title, force)


def export(model: str | Path, format: str, type: str | None = None, out: str | Path | None = None, *,  # noqa: A002
           group_size: int | None = None, max_bits: float = 5.0, calibration: str | Path | None = None,
           keep_embeddings: bool = False, data: str | Path | None = None, seq_len: int = 128,
           max_tokens: int = 2048, measure: bool = True, force: bool = False) -> dict:
    """Export a student folder, as `kdistill export`: `format` gguf (with `type` F32, F16, Q8_0, Q5_0 or
    Q4_0), int8 or int4 (group size, clipping and int8 layers chosen by KL on `calibration` text within
    `max_bits` a weight; `group_size` fixes the group). Returns {"out": path, "format": label, "card":
    model card path, "report": size and KL(fp32 || export) on held-out text (`data`, else a built-in
    paragraph), None if not `measure`; "warning": the line printed when that KL is far above the type's
    bound, else None}. An existing `out` is replaced only with `force`; the model folder, its inputs and a
    run folder never are (kdistill/base/outputs.py)."""
    from kdistill.export.pipeline import ExportSettings, export_model

    return export_model(ExportSettings(
        model=str(model), format=format, type=type, out=str(out) if out else None, group_size=group_size,
        max_bits=max_bits, calibration=str(calibration) if calibration else None, keep_embeddings=keep_embeddings,
        data=str(data) if data else None, seq_len=seq_len, max_tokens=max_tokens, measure=measure,
        force=force))
