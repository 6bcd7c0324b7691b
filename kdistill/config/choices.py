"""The config keys that take one of a few names, typed as `Literal`, and the one check of such a value.

A field annotated with one of these types (or a list of one) accepts only its names: `load_config`
refuses anything else with the valid names and the nearest one, `validate` does the same for a Config
built in code, and `kdistill config show` / `kdistill config reference` list them.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Literal

from kdistill.base.errors import ConfigError

Dtype = Literal["auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16"]  # base/hardware.DTYPES
LoadIn = Literal["full", "8bit", "4bit"]
Combine = Literal["sum", "route"]
ServerApi = Literal["vllm", "sglang"]  # sources/server_client.APIS
StudentKind = Literal["llama", "fractal", "pretrained"]
StudentInit = Literal["teacher", "random"]
LayerSelection = Literal["importance", "even", "first_last", "explicit"]
DataFormat = Literal["auto", "text", "instruction"]
Distributed = Literal["auto", "none", "ddp", "fsdp"]  # train/distributed.MODES
Tracker = Literal["jsonl", "tensorboard", "aim", "wandb"]  # train/tracking.KINDS
CacheMode = Literal["topk", "sampled"]
RolloutSource = Literal["data", "student", "teacher"]
PromptFormat = Literal["auto", "chat", "plain"]
CotMode = Literal["rationale", "program", "code"]
AnswerType = Literal["auto", "exact", "numeric", "choice"]


def choices(tp) -> tuple[str, ...] | None:
    """The names a field of type `tp` accepts (a Literal, an optional one, or a list of one), else None."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return args
    if origin in (typing.Union, types.UnionType, list):
        inner = [choices(a) for a in args if a is not type(None)]
        return inner[0] if len(inner) == 1 else None
    return None


def check_choice(value, names: tuple[str, ...], path: str, where: str = "") -> str:
    """`value` when it is one of `names`; else ConfigError naming `path`, the nearest name and every one."""
    if isinstance(value, str) and value in names:
        return value
    noun = path.rsplit(".", 1)[-1].split("[")[0].replace("_", " ")
    near = difflib.get_close_matches(str(value), names, n=1)
    hint = f"; did you mean '{near[0]}'?" if near else ""
    at = f" ({where})" if where else ""
    raise ConfigError(f"{path}{at}: unknown {noun} {value!r} (choices: {', '.join(names)}){hint}")


def check_choices(section, prefix: str = "") -> None:
    """Every Literal-typed value of dataclass `section` and its sub-sections (a Config built in code)."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value, path = getattr(section, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_choices(value, path + ".")
            continue
        names = choices(hints[f.name])
        if names is None or value is None:
            continue
        for i, item in enumerate(value) if isinstance(value, list) else [(None, value)]:
            check_choice(item, names, path if i is None else f"{path}[{i}]")
