"""Resume means the same data: the local files a run reads, fingerprinted into every checkpoint.

    files = data_files(cfg)           # {"data.path": {"/data/notes.jsonl": "<sha256>"}}
    changes(saved, files)             # ["data.path: /data/notes.jsonl changed (sha256 1a2b3c4d5e6f -> ...)"]

The keys that name a local file or folder of the data (`KEYS`) are fingerprinted by content (sha256 of
each file; every data file of a folder). A hub dataset or a built-in set (`cot.problems: humaneval`) has
no local file: its name is in the config, which `--resume` compares already (run/folder.config_changes).
Teacher-written data is made from these files and the config, so it changes only when they do.
"""
from __future__ import annotations

from functools import reduce
from pathlib import Path

from kdistill.base import fsutil
from kdistill.data.files import SUFFIXES

KEYS = ("data.path", "data.generate.prompts", "data.generate.self_instruct.seed_tasks",
        "data.generate.cot.problems")


def _files(spec: str) -> list[Path]:
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
    return []


def data_files(cfg) -> dict[str, dict[str, str]]:
    """{config key: {file path: sha256}} for every key of `KEYS` that names a local file or folder."""
    out = {}
    for key in KEYS:
        spec = reduce(getattr, key.split("."), cfg)
        files = _files(spec) if spec else []
        if files:
            out[key] = {str(f): fsutil.sha256_file(f) for f in files}
    return out


def changes(saved: dict, now: dict) -> list[str]:
    """One line per data file that differs between the checkpoint's record and now, naming key and file."""
    lines = []
    for key in sorted(set(saved) | set(now)):
        before, after = saved.get(key, {}), now.get(key, {})
        for name in sorted(set(before) | set(after)):
            old, new = before.get(name), after.get(name)
            if old == new:
                continue
            what = ("is new" if old is None else "is gone" if new is None else
                    f"changed (sha256 {old[:12]} -> {new[:12]})")
            lines.append(f"{key}: {name} {what}")
    return lines
