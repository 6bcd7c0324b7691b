"""Reading config values into the typed sections: YAML files, `key.path=value` overrides, coercion.

Values are coerced to each field's type (PyYAML reads `1e-3` as a string), a typed choice (`Literal`,
kdistill/config/choices.py) must be one of its names, a list key takes a single value as a list of one
(`train.tracker=tensorboard`), a key that cannot be empty refuses empty, a key given twice in one YAML
mapping is refused (PyYAML keeps the last silently), and an unknown key is an error that names the file
and line and the nearest valid key. Where each key was set is kept in `origins` (key path -> `FILE, line
N` or `command line`) for the range checks' messages. kdistill/config/schema.py's `load_config` drives these.
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


def _union(value, args: tuple, path: str, at: str):
    """`value` as one of the types of a union: empty for an optional key, a name of a Literal member
    (`int | Literal["auto"]`), else the first other type."""
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
        if type(None) in args:
            return None
    inner = [a for a in args if a is not type(None)]
    names = [n for a in inner if typing.get_origin(a) is typing.Literal for n in typing.get_args(a)]
    if isinstance(value, str) and value in names:
        return value
    others = [a for a in inner if typing.get_origin(a) is not typing.Literal]
    if names and others:
        try:
            return coerce(value, others[0], path, at)
        except ConfigError:
            kind = getattr(others[0], "__name__", others[0])
            raise ConfigError(f"{path} ({at}): {value!r} is not a valid {kind} (nor {', '.join(names)})") from None
    return coerce(value, inner[0], path, at)


def _as_list(value) -> list:
    """A list value; a single value is a list of one (`train.tracker=tensorboard`), empty an empty list."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = load_text(value)[0]
        except yaml.YAMLError:
            raise ValueError from None  # "not a valid list"
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def coerce(value, tp, path: str, at: str):
    """Coerce a YAML/CLI value to the annotated type `tp`, or raise ConfigError naming `path`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return _union(value, args, path, at)
    if origin is typing.Literal:
        return check_choice(value if isinstance(value, (str, bool)) else str(value), args, path, at)
    if value is None and origin is not list:
        raise ConfigError(f"{path} ({at}) cannot be empty: give a value, or leave the key out for its default")
    try:
        if tp in (bool, int, float, str):
            return _scalar(value, tp)
        if origin is list:
            value = _as_list(value)
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


def _note_origin(origins: dict, path: str, source: str | None, lines: dict) -> None:
    """Record where `path` (and, from a file, each item inside its value) was set; forget older items."""
    for key in [k for k in origins if k.startswith((path + ".", path + "["))]:
        del origins[key]
    origins[path] = where(source, lines, path)
    if source is not None:
        origins.update({k: f"{source}, line {n}" for k, n in lines.items() if k.startswith((path + ".", path + "["))})


def apply(obj, data: dict, prefix: str, source: str | None, lines: dict, known: list[str],
          origins: dict | None = None) -> None:
    """Set fields of dataclass `obj` from mapping `data`, recursing into nested sections. `known`: every
    key of the whole config, for the nearest-key hint; `origins` gets where each key was set."""
    origins = {} if origins is None else origins
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
            apply(current, value, path, source, lines, known, origins)
        else:
            setattr(obj, key, coerce(value, hints[key], path, where(source, lines, path)))
            _note_origin(origins, path, source, lines)


class DuplicateKey(yaml.YAMLError):
    """A key given twice in one YAML mapping: its path and the lines of both."""

    def __init__(self, path: str, line: int, first: int):
        super().__init__(f"{path} is given twice (lines {first} and {line})")
        self.path, self.line, self.first = path, line, first


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a key given twice in one mapping raises DuplicateKey (two `train:`
    blocks, or `lr` twice in one). `paths` maps each mapping or list node to its key path."""

    def __init__(self, text: str, root: str = ""):
        super().__init__(text)
        self.root_path, self.paths = root, {}

    def construct_mapping(self, node, deep=False):
        prefix, seen = self.paths.get(id(node), self.root_path), {}
        for key_node, value_node in node.value:
            path = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            line = key_node.start_mark.line + 1
            if path in seen:
                raise DuplicateKey(path, line, seen[path])
            seen[path] = line
            self.label(value_node, path)
        return super().construct_mapping(node, deep)

    def label(self, node, path: str) -> None:
        """Remember `node`'s key path (and its items', `path[i]`, when it is a list)."""
        self.paths[id(node)] = path
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.label(item, f"{path}[{i}]")


def _key_lines(node, prefix: str = "", out: dict | None = None) -> dict:
    """Map each key path in a composed YAML node to its 1-based line number (list items as `key[i]`)."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            path = f"{prefix}.{k.value}" if prefix else str(k.value)
            out[path] = k.start_mark.line + 1
            _key_lines(v, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[f"{prefix}[{i}]"] = item.start_mark.line + 1
            _key_lines(item, f"{prefix}[{i}]", out)
    return out


def load_text(text: str, root: str = "") -> tuple[object, dict]:
    """(value, key path -> line) of YAML `text` whose keys sit under `root`; DuplicateKey for a key given
    twice in one mapping, yaml.YAMLError when it is not YAML."""
    loader = UniqueKeyLoader(text, root)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        loader.label(node, root)
        return loader.construct_document(node), _key_lines(node, root)
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> tuple[dict, dict]:
    """Read a YAML config file; returns (data, key path -> line)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        data, lines = load_text(text)
        data = data or {}
    except DuplicateKey as e:
        raise ConfigError(f"{path}, line {e.line}: {e.path} is given twice (first at line {e.first}); YAML would "
                          "silently keep only the last one: keep one of them (merge two sections into one)") from None
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
    try:
        return key.strip(), (load_text(value, key.strip())[0] if value.strip() else None)
    except DuplicateKey as e:
        raise ConfigError(f"override {text!r}: {e.path} is given twice; keep one of them") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({getattr(e, 'problem', e)}); quote "
                          "it or fix its brackets") from None


def nest(key: str, value) -> dict:
    """`a.b.c`, v -> {a: {b: {c: v}}}."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value
