"""What each config key accepts, declared beside the key, and the one check of every value against it.

    max_steps: int = ranged(150, ">= 1")  # in a section of kdistill/config/schema.py, its docstring below
    min_lr_ratio: float = ranged(0.1, "[0, 1]", "a fraction of the peak learning rate")

A range is `>= a`, `> a`, `<= b`, `< b` or an interval `[a, b]`, `(a, b]`, `[a, b)`, `(a, b)`; an optional
key (`int | None`) also takes empty, a key typed `int | Literal["auto"]` also takes its names, and a list of
numbers (`list[int]`) checks each item. `check_ranges(cfg, origins)` runs in `validate`, so in `load_config`
before any model loads: it refuses a number outside its range or not finite, and an empty value of a key
that cannot be empty (`output_dir=`), each naming the key, where it was set (file and line, or the
command line) and what it accepts. tests/config/test_ranges.py fails when a numeric key declares none.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Literal

from kdistill.base.errors import ConfigError

NUMBER = r"[-+]?(?:\d+\.?\d*(?:e[-+]?\d+)?|inf)"
BOUND = re.compile(rf"(>=|>|<=|<)\s*({NUMBER})")
INTERVAL = re.compile(rf"([\[(])\s*({NUMBER})\s*,\s*({NUMBER})\s*([\])])")


@dataclass(frozen=True)
class Range:
    """The numbers a key accepts: low and high bounds, each included unless open."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def holds(self, x: float) -> bool:
        above = x > self.low if self.low_open else x >= self.low
        below = x < self.high if self.high_open else x <= self.high
        return above and below

    def text(self) -> str:
        """In words: `at least 1`, `above 0`, `between 0 and 1`, `in (0, 1]`."""
        lo, hi = _num(self.low), _num(self.high)
        if self.high == math.inf:
            return f"above {lo}" if self.low_open else f"at least {lo}"
        if self.low == -math.inf:
            return f"below {hi}" if self.high_open else f"at most {hi}"
        if not (self.low_open or self.high_open):
            return f"between {lo} and {hi}"
        return f"in {'(' if self.low_open else '['}{lo}, {hi}{')' if self.high_open else ']'}"


def _num(x: float) -> str:
    return str(int(x)) if math.isfinite(x) and x == int(x) else f"{x:g}"


def parse_range(spec: str) -> Range:
    """`>= 1`, `> 0`, `<= 0`, `[0, 1]`, `(0, 1]` ... as a Range (ValueError for anything else)."""
    text = spec.strip()
    if m := BOUND.fullmatch(text):
        op, x = m.group(1), float(m.group(2))
        return Range(low=x, low_open=op == ">") if op.startswith(">") else Range(high=x, high_open=op == "<")
    if m := INTERVAL.fullmatch(text):
        return Range(float(m.group(2)), float(m.group(3)), m.group(1) == "(", m.group(4) == ")")
    raise ValueError(f"not a range: {spec!r} (write >= 1, > 0, [0, 1], (0, 1] ...)")


def ranged(default, accepts: str, hint: str = ""):
    """A dataclass field with its default and the range it accepts; `hint` says what a bound value means
    (e.g. `0 = off`) and is shown with the range in errors and in docs/configuration.md."""
    return dataclasses.field(default=default, metadata={"range": parse_range(accepts), "hint": hint})


def _parts(tp) -> tuple[list, tuple[str, ...], bool, bool]:
    """(scalar types, Literal names, optional, list) of a field type such as `int | None`, `list[int]`,
    `int | Literal["auto"]`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        scalars, names, _, _ = _parts(args[0]) if args else ([], (), False, False)
        return scalars, names, False, True
    if origin in (typing.Union, types.UnionType):
        out = [_parts(a) for a in args if a is not type(None)]
        scalars = [s for part in out for s in part[0]]
        names = tuple(n for part in out for n in part[1])
        return scalars, names, type(None) in args, any(part[3] for part in out)
    if origin is Literal:
        return [], args, False, False
    return [tp], (), False, False


def is_numeric(tp) -> bool:
    """Whether a field of type `tp` holds numbers (int or float, alone, optional, in a list or with names)."""
    return any(s in (int, float) for s in _parts(tp)[0])


def leaves(section, prefix: str = ""):
    """(dotted path, dataclass field, value, type) of every key of dataclass `section`, sub-sections too."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value, path = getattr(section, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from leaves(value, path + ".")
        else:
            yield path, f, value, hints[f.name]


def accepts(f: dataclasses.Field, tp, item: bool = False) -> str | None:
    """What a numeric key (or, `item`, each item of a list key) accepts in words (`at least 1, or empty
    (0 = off)`); None without a range."""
    rng = f.metadata.get("range")
    if rng is None:
        return None
    _, names, optional, is_list = _parts(tp)
    text = ("each " if is_list and not item else "") + rng.text() + "".join(f", or {n}" for n in names)
    text += ", or empty" if optional and not item else ""
    return text + (f" ({f.metadata['hint']})" if f.metadata.get("hint") else "")


def where_set(origins: dict | None, path: str) -> str:
    """` (FILE, line N)` or ` (command line)`: where `path` or the key holding it was set; "" when unknown."""
    while path:
        if origins and path in origins:
            return f" ({origins[path]})"
        path = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", path) if re.search(r"[.\[]", path) else ""
    return ""


def _check_number(value, f, tp, path: str, origins: dict | None) -> None:
    """ConfigError naming `path` unless `value` is empty where allowed, a name, or a finite number in range."""
    scalars, names, optional, is_list = _parts(tp)
    if value is None and optional:
        return
    items = list(enumerate(value)) if is_list and isinstance(value, list) else [(None, value)]
    for i, item in items:
        key = path if i is None else f"{path}[{i}]"
        if isinstance(item, str) and item in names:
            continue
        number = isinstance(item, (int, float)) and not isinstance(item, bool)
        if number and math.isfinite(item) and f.metadata["range"].holds(item) and (float in scalars or
                                                                                    isinstance(item, int)):
            continue
        finite = "a finite number " if number and not math.isfinite(item) else ""
        raise ConfigError(f"{key}={item!r}{where_set(origins, key)} must be {finite}{accepts(f, tp, i is not None)}")


def check_ranges(cfg, origins: dict | None = None) -> None:
    """Every key of `cfg` against what it accepts: numbers in their range and finite, and no empty value
    where the key needs one. `origins`: key path -> where it was set, for the message."""
    for path, f, value, tp in leaves(cfg):
        _, _, optional, is_list = _parts(tp)
        if "range" in f.metadata:
            _check_number(value, f, tp, path, origins)
        elif not optional and not is_list and (value is None or (isinstance(value, str) and not value.strip())):
            raise ConfigError(f"{path}{where_set(origins, path)} cannot be empty: give a value, or leave the key out "
                              f"for its default ({f.default!r})")
