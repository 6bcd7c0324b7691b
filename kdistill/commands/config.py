"""`kdistill config`: every config key with its value and meaning, the shipped configs, a copy to edit.

    kdistill config show [--config F] [key.path=value ...]   # the resolved YAML, each key's docstring as a comment
    kdistill config list                                     # configs/*.yaml with what each is for
    kdistill config cp demo my_run.yaml [--force]            # copy one to edit
    kdistill config reference > docs/configuration.md        # every key as Markdown (the file is checked by a test)

The meanings are the attribute docstrings of the dataclasses in kdistill/config/schema.py (a string literal
right after a field), read from their source with `ast`; the choices of a key are its `Literal` type
(kdistill/config/choices.py). `config show`'s output loads back with `load_config` to the same config.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import textwrap
import typing
from pathlib import Path

import yaml

from kdistill.base import fsutil
from kdistill.base.errors import ConfigError
from kdistill.base.outputs import check_output
from kdistill.config.choices import choices
from kdistill.config.presets import PRESETS, SIZE_KEYS
from kdistill.config.ranges import accepts
from kdistill.config.schema import Config, LossConfig, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"  # the repository's shipped configs
REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
REGENERATE = "kdistill config reference > docs/configuration.md"


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


def term_kinds() -> tuple[str, ...]:
    """The kinds a `loss.terms` entry takes (kdistill/losses: divergences, ce, ..., feature terms)."""
    from kdistill.losses.config import KINDS
    from kdistill.losses.feature_terms import KINDS as FEATURE_KINDS

    return (*KINDS, *FEATURE_KINDS)


def key_choices(section, name: str) -> tuple[str, ...] | None:
    """The names key `name` of dataclass `section` accepts, or None when it is not a choice."""
    if isinstance(section, LossConfig) and name == "terms":
        return term_kinds()  # each term's `kind`
    return choices(typing.get_type_hints(type(section))[name])


def _choices_text(section, name: str) -> str | None:
    names = key_choices(section, name)
    if names is None:
        return _accepts(section, name) and f"accepts: {_accepts(section, name)}"
    return ("each term's kind: " if isinstance(section, LossConfig) else "choices: ") + ", ".join(names)


def _accepts(section, name: str) -> str | None:
    """What a numeric key accepts in words (its range, kdistill/config/ranges.py); None for other keys."""
    f = next(f for f in dataclasses.fields(section) if f.name == name)
    return accepts(f, typing.get_type_hints(type(section))[name])


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
            lines += _comment(docs.get(f.name), indent) + _comment(_choices_text(obj, f.name), indent)
            lines.append(f"{indent}{f.name}: {_value(value)}")
    return lines


def show(cfg: Config) -> str:
    head = ["# The resolved kdistill config: every key, its value, and (in comments) its meaning.",
            "# A config file states only what differs from these defaults; any key can also be set on the",
            "# command line as key.path=value."]
    return "\n".join(head + show_lines(cfg)) + "\n"


def _type_name(tp) -> str:
    """A field's type in words: int, float or empty, list of str, choice, ..."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "choice"
    if origin is list:
        return f"list of {_type_name(args[0]) if args else 'values'}"
    if origin is dict or tp is dict:
        return "mapping"
    inner = [a for a in args if a is not type(None)]
    if len(inner) > 1:  # int | Literal["auto"]
        return " or ".join(_type_name(a) for a in inner) + " or empty" * (len(inner) < len(args))
    if inner and len(inner) < len(args):
        return f"{_type_name(inner[0])} or empty"
    return getattr(tp, "__name__", str(tp))


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _reference_rows(section, prefix: str) -> list[str]:
    """The table of one section's keys; its sub-sections follow as sections of their own."""
    hints, docs = typing.get_type_hints(type(section)), field_docs(type(section))
    rows = ["| key | type | default | accepts | meaning |", "|---|---|---|---|---|"]
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            continue
        default = "empty" if value is None else f"`{_value(value)}`"
        names = key_choices(section, f.name)
        listed = ("each term's kind: " * isinstance(section, LossConfig) + ", ".join(f"`{n}`" for n in names)
                  if names else _accepts(section, f.name) or "")
        rows.append(f"| `{prefix}{f.name}` | {_cell(_type_name(hints[f.name]))} | {_cell(default)} | "
                    f"{_cell(listed)} | {_cell(docs.get(f.name, ''))} |")
    return rows


def _reference_sections(obj, prefix: str = "") -> list[str]:
    """A heading, a description and a table for `obj` and for each of its sub-sections, depth first."""
    docs = field_docs(type(obj))
    out = [f"## {f'`{prefix[:-1]}`' if prefix else 'Top level'}", ""]
    about = _class_doc(type(obj)) if prefix else None
    out += [_cell(about), ""] if about else []
    out += _reference_rows(obj, prefix) + [""]
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            sub = _reference_sections(value, f"{prefix}{f.name}.")
            about = docs.get(f.name)
            out += sub[:2] + ([_cell(about), ""] if about and not _class_doc(type(value)) else []) + sub[2:]
    return out


def _presets_table() -> list[str]:
    """The student presets (kdistill/config/presets.py): what each sets; the rest is the teacher's."""
    rows = ["## Student presets (`student.preset`)", "",
            "Each preset sets these sizes; a size it leaves blank is the teacher's (so its layers copy over), "
            "and any `student.*` size key overrides the preset.", "",
            "| preset | " + " | ".join(SIZE_KEYS) + " |", "|---|" + "---|" * len(SIZE_KEYS)]
    for name, sizes in PRESETS.items():
        cells = [str(sizes.get(k, "")) for k in SIZE_KEYS]
        if "layer_fraction" in sizes:
            cells[0] = f"{sizes['layer_fraction']:.0%} of the teacher's"
        rows.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return rows + [""]


def reference() -> str:
    """docs/configuration.md: every section and key of the config with its type, default, choices and
    meaning, and the student presets; generated from kdistill/config, so it cannot drift."""
    head = ["# Configuration reference", "",
            f"Generated from `kdistill/config/` by `{REGENERATE}`; edit the docstrings there, not this file.",
            "",
            "A config file (YAML) states only what differs from these defaults; any key can also be set on the "
            "command line as `key.path=value`. `kdistill config show` prints the resolved config with these "
            "meanings as comments. A key with choices takes only the names listed (the nearest is suggested), a "
            "number only its range (checked when the config loads, before any model); a list key takes a single "
            "value as a list of one; `empty` is YAML `null` or nothing after `=`. Defaults marked empty that depend on other keys "
            "(`train.lr`) are filled when the config loads.", ""]
    lines = head + _reference_sections(Config()) + _presets_table()
    return "\n".join(lines).rstrip("\n") + "\n"


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
    """Copy shipped config `name` to `file` (the output rule of kdistill/base/outputs.py: an existing file
    only with `force`, never the shipped file itself or a run's own config.yaml)."""
    src, dst = find_shipped(name), Path(file)
    if dst.is_dir():
        raise ConfigError(f"FILE {dst} is a folder; give a file name like {dst / src.name}")
    check_output(dst, force, [src], "FILE")
    fsutil.write_text(dst, src.read_text())
    return dst


def main(args) -> int:
    if args.action == "show":
        print(show(load_config(args.config, args.overrides)), end="")
    elif args.action == "reference":
        print(reference(), end="")
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
