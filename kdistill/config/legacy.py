"""A run folder's config.yaml as written by an earlier kdistill, read with today's keys.

    cfg = load_run_config(Path("runs/demo") / "config.yaml")

Values an earlier version wrote that today's ranges refuse are read as what they meant (`RENAMED`):
`train.threads: 0` was "all cores" before `auto` existed. A user's own config file is never read this
way: there, such a value is an error naming the key.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from kdistill.config.schema import Config, load_config

RENAMED = {("train", "threads", 0): "auto"}  # (section, key, old value) -> today's value


def load_run_config(path: str | Path) -> Config:
    """`load_config(path)` with the old values of `RENAMED` read as today's."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError):
        raw = {}  # load_config says what is wrong with the file
    overrides = [f"{section}.{key}={new}" for (section, key, old), new in RENAMED.items()
                 if isinstance(raw, dict) and isinstance(raw.get(section), dict) and raw[section].get(key) == old
                 and type(raw[section].get(key)) is type(old)]
    return load_config(path, overrides)
