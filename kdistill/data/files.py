"""Read records from local .txt, .jsonl, .json, .csv and .parquet files, or a hub dataset by name.

Every record is a dict. A .txt file gives one record {"text": whole file}, so plain text is packed
across line breaks. Errors name the file and, for JSONL, the line.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataError

SUFFIXES = (".txt", ".md", ".jsonl", ".json", ".csv", ".parquet")


def read_records(spec: str, split: str = "train", max_records: int | None = None) -> list[dict]:
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES)
        if not files:
            raise DataError(f"data.path: folder {spec} has no {'/'.join(SUFFIXES)} files")
        records = [r for f in files for r in _read_file(f)]
    elif path.is_file():
        records = _read_file(path)
    elif path.suffix in SUFFIXES or spec.startswith((".", "/", "~")):
        raise DataError(f"data.path: file {spec} does not exist")
    else:
        records = _read_hub(spec, split)
    if not records:
        raise DataError(f"data.path: {spec} holds no records (empty file?); give a file with text in it")
    return records[:max_records] if max_records else records


def _read_file(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix in (".txt", ".md"):
        text = path.read_text(encoding="utf-8", errors="replace")
        return [{"text": text}] if text.strip() else []
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        return _read_json(path)
    if suffix in (".csv", ".parquet"):
        return _read_table(path, suffix)
    raise DataError(f"data.path: {path} has an unknown suffix; use one of {', '.join(SUFFIXES)}")


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {number}: not valid JSON ({e.msg} at column {e.colno}); "
                                "each line must be one JSON object") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}, line {number}: expected a JSON object like {{\"text\": ...}}, "
                                f"got {type(record).__name__}")
            records.append(record)
    return records


def _read_json(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        data = lists[0] if len(lists) == 1 else [data]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{path}: expected a list of JSON objects")
    return data


def _read_table(path: Path, suffix: str) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"{path}: reading {suffix} files needs `pip install datasets`") from None
    kind = "csv" if suffix == ".csv" else "parquet"
    try:
        table = datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as e:  # datasets raises many types for unreadable files
        raise DataError(f"{path}: cannot read as {kind}: {e}") from None
    return [dict(r) for r in table]


def _read_hub(name: str, split: str) -> list[dict]:
    try:
        import datasets

        table = datasets.load_dataset(name, split=split)
    except Exception as e:  # offline, missing, or not a dataset
        raise DataError(f"data.path: {name!r} is neither a local file nor a dataset that can be loaded "
                        f"({type(e).__name__}: {e}). Offline, give a local file") from None
    return [dict(r) for r in table]
