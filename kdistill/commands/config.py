"""`kdistill config`: every config key with its value and meaning, the shipped configs, a copy to edit.

    kdistill config show [--config F] [key.path=value ...]   # the resolved YAML, each key's docstring as a comment
    kdistill config list                                     # configs/*.yaml with what each is for
    kdistill config cp demo my_run.yaml [--force]            # copy one to edit

The meanings are the attribute docstrings of the dataclasses in kdistill/config/schema.py (a string literal
right after a field), read from their source with `ast`. `config show`'s output loads back with
`load_config` to the same config.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import textwrap
from pathlib import Path

import yaml

from kdistill.base import fsutil
from kdistill.base.errors import ConfigError
from kdistill.config.schema import Config, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"  # the repository's shipped configs


@functools.cache
def field_docs(cls) -> dict[str, str]:
    """{field name: its docstring} of a dataclass, from the string literal after each annotated field."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _comment(text: str | None, indent: str) -> list[str]:
    if not text:
        return []
    return [f"{indent}# {line}".rstrip() for line in text.splitlines()]


def _class_doc(cls) -> str | None:
    """A section's own docstring; None for the signature that @dataclass writes when there is none."""
    doc = cls.__doc__ or ""
    return None if not doc or doc.startswith(cls.__name__ + "(") else inspect.cleandoc(doc)


def _value(value) -> str:
    """A value as one line of YAML flow style (lists and mappings inline)."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10 ** 9, allow_unicode=True)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def show_lines(obj, indent: str = "") -> list[str]:
    """The YAML lines of dataclass `obj`: sections nested, each field preceded by its docstring."""
    docs = field_docs(type(obj))
    lines = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            lines += _comment(docs.get(f.name) or _class_doc(type(value)), indent)
            lines.append(f"{indent}{f.name}:")
            lines += show_lines(value, indent + "  ")
        else:
            lines += _comment(docs.get(f.name), indent)
            lines.append(f"{indent}{f.name}: {_value(value)}")
    return lines


def show(cfg: Config) -> str:
    head = ["# The resolved kdistill config: every key, its value, and (in comments) its meaning.",
            "# A config file states only what differs from these defaults; any key can also be set on the",
            "# command line as key.path=value."]
    return "\n".join(head + show_lines(cfg)) + "\n"


def shipped() -> list[tuple[str, str]]:
    """(name, first comment line) of each configs/*.yaml."""
    out = []
    for path in sorted(CONFIGS.glob("*.yaml")):
        first = next((line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#")), "")
        out.append((path.stem, first))
    return out


def find_shipped(name: str) -> Path:
    names = [n for n, _ in shipped()]
    stem = Path(name).name.removesuffix(".yaml").removesuffix(".yml")
    if stem not in names:
        near = difflib.get_close_matches(stem, names, n=1)
        hint = f"did you mean '{near[0]}'?" if near else f"choose one of {', '.join(names) or '(none found)'}"
        raise ConfigError(f"no shipped config named '{name}' in {CONFIGS}; {hint} (see `kdistill config list`)")
    return CONFIGS / f"{stem}.yaml"


def copy(name: str, file: str, force: bool = False) -> Path:
    src, dst = find_shipped(name), Path(file)
    if dst.exists() and not force:
        raise ConfigError(f"{dst} exists; pass --force to replace it, or choose another FILE")
    if dst.is_dir():
        raise ConfigError(f"{dst} is a folder; give a file name like {dst / src.name}")
    fsutil.write_text(dst, src.read_text())
    return dst


def main(args) -> int:
    if args.action == "show":
        print(show(load_config(args.config, args.overrides)), end="")
    elif args.action == "list":
        rows = shipped()
        width = max((len(n) for n, _ in rows), default=0)
        for name, first in rows:
            print(f"{name:<{width}}  {first}")
        print(f"\n({CONFIGS}; copy one with `kdistill config cp NAME FILE`, run it with "
              "`kdistill distill --config FILE`)")
    else:
        dst = copy(args.name, args.file, args.force)
        print(f"wrote {dst}; run it with: kdistill distill --config {dst}")
    return 0
