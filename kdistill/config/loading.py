"""Reading config values into the typed sections: YAML files, `key.path=value` overrides, coercion.

Values are coerced to each field's type (PyYAML reads `1e-3` as a string), a typed choice (`Literal`,
kdistill/config/choices.py) must be one of its names, and an unknown key is an error that names the file
and line and the nearest valid key. kdistill/config/schema.py's `load_config` drives these.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path

import yaml

from kdistill.base.errors import ConfigError
from kdistill.config.choices import check_choice


def where(source: str | None, lines: dict, path: str) -> str:
    if source is None:
        return "command line"
    line = lines.get(path)
    return f"{source}, line {line}" if line else source


def _scalar(value, tp):
    """`value` as bool, int, float or str (ValueError when it is not one)."""
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        if isinstance(value, bool):
            return value
        raise ValueError
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ValueError
        return str(value)
    if isinstance(value, bool):
        raise ValueError
    if tp is int:
        f = float(value)
        if f != int(f):
            raise ValueError
        return int(f)
    return float(value)


def coerce(value, tp, path: str, at: str):
    """Coerce a YAML/CLI value to the annotated type `tp`, or raise ConfigError naming `path`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], path, at)
    if origin is typing.Literal:
        return check_choice(value if isinstance(value, (str, bool)) else str(value), args, path, at)
    try:
        if tp in (bool, int, float, str):
            return _scalar(value, tp)
        if origin is list:
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if not isinstance(value, list):
                raise ValueError
            return [coerce(v, args[0], f"{path}[{i}]", at) for i, v in enumerate(value)] if args else value
        if (tp is dict or origin is dict) and not isinstance(value, dict):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{path} ({at}): {value!r} is not a valid {getattr(tp, '__name__', tp)}") from None
    return value


def every_key(obj, prefix: str = "") -> list[str]:
    """The dotted path of every leaf key of dataclass `obj`."""
    out = []
    for f in dataclasses.fields(obj):
        path = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(obj, f.name)
        out.extend(every_key(value, path) if dataclasses.is_dataclass(value) else [path])
    return out


def apply(obj, data: dict, prefix: str, source: str | None, lines: dict, known: list[str]) -> None:
    """Set fields of dataclass `obj` from mapping `data`, recursing into nested sections. `known`: every
    key of the whole config, for the nearest-key hint."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} ({where(source, lines, prefix)}): expected a mapping of keys")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            valid = [f"{prefix}.{n}" if prefix else n for n in names]
            near = difflib.get_close_matches(path, valid + known, n=1, cutoff=0.6)
            hint = f"; did you mean '{near[0]}'?" if near else f"; valid keys here: {', '.join(valid)}"
            raise ConfigError(f"unknown config key '{path}' ({where(source, lines, path)}){hint}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            apply(current, value, path, source, lines, known)
        else:
            setattr(obj, key, coerce(value, hints[key], path, where(source, lines, path)))


def _key_lines(node, prefix: str = "", out: dict | None = None) -> dict:
    """Map each key path in a composed YAML mapping to its 1-based line number."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            path = f"{prefix}.{k.value}" if prefix else str(k.value)
            out[path] = k.start_mark.line + 1
            _key_lines(v, path, out)
    return out


def read_yaml(path: str | Path) -> tuple[dict, dict]:
    """Read a YAML config file; returns (data, key path -> line)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        data = yaml.safe_load(text) or {}
        lines = _key_lines(yaml.compose(text))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{at}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping like 'train: {{max_steps: 10}}'")
    return data, lines


def parse_override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value (e.g. train.max_steps=20)")
    key, value = text.split("=", 1)
    return key.strip(), (yaml.safe_load(value) if value.strip() else None)


def nest(key: str, value) -> dict:
    """`a.b.c`, v -> {a: {b: {c: v}}}."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value
