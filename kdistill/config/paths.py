"""The local files and folders a config reads: what a command's output must never touch.

    for key, path in input_paths(cfg):   # ("data.path", Path("notes.jsonl")), ("teacher.sources[1].model", ...)

Every string of the config (lists and the mappings of `teacher.sources` and `loss.terms` included) that
names an existing file or folder is an input, whatever its key: a key added later cannot be missed. Keys
that name outputs (`OUTPUT_KEYS`) and keys whose value is a choice (a `Literal`) are left out.
"""
from __future__ import annotations

import typing
from pathlib import Path

from kdistill.config.ranges import leaves

OUTPUT_KEYS = ("output_dir", "cache.out")  # where a command writes, not what it reads


def _strings(value, key: str):
    """(key, string) of a value and everything inside it (lists, mappings)."""
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _strings(v, f"{key}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{key}.{k}")


def _existing(text: str) -> Path | None:
    try:
        path = Path(text).expanduser()
        return path if text.strip() and path.exists() else None
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return None


def input_paths(cfg) -> list[tuple[str, Path]]:
    """(dotted key, path) of every existing local file or folder the config names as an input."""
    found = []
    for key, _f, value, tp in leaves(cfg):
        if key in OUTPUT_KEYS or typing.get_origin(tp) is typing.Literal:
            continue
        found += [(k, p) for k, text in _strings(value, key) if (p := _existing(text)) is not None]
    return found
