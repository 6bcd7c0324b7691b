"""lm-eval task YAMLs read as kdistill task records, so `--tasks` takes an lm-eval task file directly.

    kdistill eval --run runs/demo --tasks my_tasks/arc_local.yaml

kdistill reads this subset of lm-eval 0.4's task config itself, exactly as lm-eval's `ConfigurableTask`
does (a test checks the two readings agree):

- data: `dataset_path: json` with local `dataset_kwargs.data_files` (a path, a list, or {split: path};
  relative paths are taken from the YAML's folder, else the working directory), split `test_split`,
  else `validation_split`, else the only one;
- `output_type: multiple_choice` (`doc_to_choice`, `target_delimiter`, default " ") or `generate_until`
  (`generation_kwargs.until`, default ["\\n\\n"], and `max_gen_toks`), zero-shot;
- `doc_to_text`, `doc_to_target`, `doc_to_choice`: a column name, a Jinja template such as
  "Question: {{question}}\\nAnswer:" (lm-eval's Jinja settings: strict undefined names, trailing newline
  kept, the `regex_replace` filter), a literal list, or an int.

Generative tasks are scored with kdistill's exact match (case, punctuation and surrounding space ignored),
whatever `metric_list` says; multiple choice with acc and acc_norm.

A YAML outside the subset (`!function`, `process_docs`, `include`, `filter_list`, few-shot, ...) is read
with lm-eval's own loader when lm-eval is installed, else refused with a DataError naming the keys.
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import yaml

from kdistill.base.errors import DataError

KNOWN = {"task", "tag", "group", "dataset_path", "dataset_name", "dataset_kwargs", "test_split", "validation_split",
         "training_split", "fewshot_split", "output_type", "doc_to_text", "doc_to_target", "doc_to_choice",
         "target_delimiter", "fewshot_delimiter", "generation_kwargs", "metric_list", "metadata",
         "should_decontaminate", "doc_to_decontamination_query", "num_fewshot", "repeats", "description"}
OUTPUT_KINDS = {"multiple_choice": "multiple_choice", "generate_until": "generative"}


def _env():
    from jinja2 import BaseLoader, Environment, StrictUndefined

    env = Environment(loader=BaseLoader, undefined=StrictUndefined, keep_trailing_newline=True)
    env.filters["regex_replace"] = lambda s, pattern, repl, count=0: re.sub(pattern, repl, s, count=count)
    return env


def unsupported(cfg: dict) -> list[str]:
    """The keys (or values) of a parsed YAML that kdistill's own reader does not handle."""
    out = sorted(k for k in cfg if k not in KNOWN)
    if cfg.get("dataset_path") not in ("json",):
        out.append(f"dataset_path: {cfg.get('dataset_path')}")
    if cfg.get("num_fewshot") not in (None, 0):
        out.append(f"num_fewshot: {cfg['num_fewshot']}")
    if cfg.get("description"):
        out.append("description")
    if cfg.get("repeats") not in (None, 1):
        out.append(f"repeats: {cfg['repeats']}")
    if any(isinstance(cfg.get(k), int) for k in ("doc_to_text",)):
        out.append("doc_to_text as a choice index")
    return out


def data_file(cfg: dict, path: Path) -> Path:
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(files, dict):
        split = next((cfg[k] for k in ("test_split", "validation_split") if cfg.get(k) in files), None)
        if split is None and len(files) == 1:
            split = next(iter(files))
        if split is None:
            raise DataError(f"{path}: data_files has splits {sorted(files)}; set test_split to one of them")
        files = files[split]
    if isinstance(files, list):
        if len(files) != 1:
            raise DataError(f"{path}: give one data file for the evaluated split (got {len(files)})")
        files = files[0]
    if not isinstance(files, str):
        raise DataError(f"{path}: dataset_kwargs.data_files must name a local JSON/JSONL file")
    found = next((p for p in (path.parent / files, Path(files)) if p.is_file()), None)
    if found is None:
        raise DataError(f"{path}: data file {files} not found (looked beside the YAML and in the working folder)")
    return found


def read_docs(file: Path) -> list[dict]:
    """Rows of a JSON Lines file, or of a JSON file holding a list of objects."""
    text = file.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
        rows = data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{file}, line {i}: not valid JSON ({e.msg})") from None
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise DataError(f"{file}: expected JSON objects, one a line")
    return rows


def _render(env, template: str, doc: dict, where: str) -> str:
    from jinja2 import TemplateError

    try:
        return env.from_string(template).render(**doc)
    except TemplateError as e:
        raise DataError(f"{where}: template {template!r}: {e}") from None


def resolve(env, spec, doc: dict, features: set, where: str, kind: str, has_choices: bool):
    """One doc_to_* value for one doc, as lm-eval's ConfigurableTask.doc_to_text/target/choice gives it."""
    if isinstance(spec, (int, list)):
        return spec
    if isinstance(spec, dict):
        return list(spec.values())
    if spec in features:
        return doc[spec]
    text = _render(env, spec, doc, where)
    if kind == "choice":
        try:
            return ast.literal_eval(text)
        except (SyntaxError, ValueError):
            raise DataError(f"{where}: doc_to_choice rendered {text!r}, not a list") from None
    if text.isdigit() and has_choices:
        return ast.literal_eval(text)
    if kind == "target" and len(text) >= 2 and text[0] == "[" and text[-1] == "]":
        try:
            return ast.literal_eval(text)
        except (SyntaxError, ValueError):
            return text
    return text


def _mc_answer(target, choices: list[str], where: str) -> list[int]:
    targets = target if isinstance(target, list) else [target]
    out = []
    for t in targets:
        if isinstance(t, int) and 0 <= t < len(choices):
            out.append(t)
        elif isinstance(t, str) and t in choices:
            out.append(choices.index(t))
        else:
            raise DataError(f"{where}: target {t!r} is neither an index into nor one of the {len(choices)} choices")
    return out


def records_from(cfg: dict, docs: list[dict], path: Path) -> list[dict]:
    env, features = _env(), set(docs[0])
    mc = cfg["output_type"] == "multiple_choice"
    if mc and cfg.get("doc_to_choice") is None:
        raise DataError(f"{path}: a multiple_choice task needs doc_to_choice (a column, a template or a list)")
    records = []
    for i, doc in enumerate(docs):
        where = f"{path}, doc {i}"
        text = resolve(env, cfg.get("doc_to_text", ""), doc, features, where, "text", mc)
        target = resolve(env, cfg.get("doc_to_target", ""), doc, features, where, "target", mc)
        if not mc:
            records.append({"prompt": str(text), "answer": target if isinstance(target, list) else str(target)})
            continue
        choices = resolve(env, cfg.get("doc_to_choice"), doc, features, where, "choice", mc)
        rights = _mc_answer(target, [str(c) for c in choices], where)
        record = {"context": str(text), "choices": [str(c) for c in choices], "answer": rights[0]}
        records.append({**record, "answers": rights} if len(rights) > 1 else record)
    return records


def task_settings(cfg: dict, path: Path, records: list[dict]) -> dict:
    gen = cfg.get("generation_kwargs") or {}
    until = gen.get("until", ["\n\n"])
    return {"name": re.sub(r"\W+", "_", str(cfg.get("task") or path.stem)).strip("_"),
            "kind": OUTPUT_KINDS[cfg["output_type"]], "path": str(path), "records": records, "format": "lm-eval",
            "delimiter": cfg.get("target_delimiter", " "), "until": [until] if isinstance(until, str) else list(until),
            "max_new_tokens": gen.get("max_gen_toks")}


def with_lm_eval(path: Path, why: list[str]) -> dict:
    """Read a YAML outside the subset with lm-eval's own task loader (no network: local data only)."""
    try:
        from lm_eval.tasks import TaskManager, get_task_dict
    except ImportError:
        raise DataError(f"{path}: uses {', '.join(why)}, which kdistill's reader does not handle; pip install "
                        "lm-eval to read it with lm-eval's own loader, or simplify the YAML "
                        "(kdistill/data/task_lm_eval.py lists the subset)") from None
    manager = TaskManager(include_path=str(path.parent), include_defaults=False)
    name = (yaml.load(path.read_text(), Loader=_IgnoreTags) or {}).get("task", path.stem)
    task = next(iter(get_task_dict([name], manager).values()))
    cfg = {"output_type": task.OUTPUT_TYPE, "target_delimiter": task.config.target_delimiter,
           "generation_kwargs": task.config.generation_kwargs, "task": name}
    if cfg["output_type"] not in OUTPUT_KINDS or (task.config.num_fewshot or 0) > 0:
        raise DataError(f"{path}: kdistill scores zero-shot multiple_choice and generate_until tasks; this one is "
                        f"{cfg['output_type']} with num_fewshot={task.config.num_fewshot}")
    records = []
    for doc in task.eval_docs:
        text, target = task.fewshot_context(doc, 0), task.doc_to_target(doc)
        if cfg["output_type"] == "generate_until":
            records.append({"prompt": text, "answer": target if isinstance(target, list) else str(target)})
            continue
        choices = [str(c) for c in task.doc_to_choice(doc)]
        rights = _mc_answer(target, choices, str(path))
        records.append({"context": text, "choices": choices, "answer": rights[0],
                        **({"answers": rights} if len(rights) > 1 else {})})
    return task_settings(cfg, path, records)


class _IgnoreTags(yaml.SafeLoader):
    """A YAML loader that reads `!function x.y` and other tags as plain values (to find the task name)."""


_IgnoreTags.add_multi_constructor("!", lambda loader, suffix, node: None)


def read_lm_eval_yaml(path: Path) -> dict:
    """A task dict ({"name", "kind", "path", "records", "format", "delimiter", "until", "max_new_tokens"})."""
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.constructor.ConstructorError:
        return with_lm_eval(path, ["YAML tags such as !function"])
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(cfg, dict) or "output_type" not in cfg and "include" not in cfg:
        raise DataError(f"{path}: not an lm-eval task YAML (no output_type); see kdistill/data/task_lm_eval.py")
    if "output_type" in cfg and cfg["output_type"] not in OUTPUT_KINDS:
        raise DataError(f"{path}: output_type {cfg['output_type']}: kdistill scores multiple_choice and "
                        "generate_until tasks; run this one with lm_eval itself")
    why = unsupported(cfg)
    if why:
        return with_lm_eval(path, why)
    return task_settings(cfg, path, records_from(cfg, read_docs(data_file(cfg, path)), path))
