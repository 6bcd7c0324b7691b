"""`teacher.sources`: several teachers (kdistill/sources/multi.py), each entry's keys checked here.

    entries = source_entries(cfg.teacher)   # [{name, kind, weight (normalised to sum 1), ...}]
"""
from __future__ import annotations

import difflib

from kdistill.base.errors import ConfigError

KEYS = {"model": ("name", "model", "weight", "load_in", "max_memory", "offload_dir"),
        "cache": ("name", "cache", "weight"),
        "ema": ("name", "kind", "weight", "update_rate", "every")}
RESERVED = ("teacher", "cache", "mixture")  # names the metrics already use


def _entry(raw, key: str, names: set) -> dict:
    """One checked entry, its weight not yet normalised; ConfigError naming `key`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: expected a mapping like {{name: a, model: default}}, got {raw!r}")
    kind = raw.get("kind", "cache" if "cache" in raw else "model")
    if kind not in KEYS:
        raise ConfigError(f"{key}.kind: {kind!r} is not a source kind; give `model:` or `cache:`, or kind: ema")
    for k in raw:
        if k not in KEYS[kind]:
            near = difflib.get_close_matches(k, KEYS[kind], n=1)
            raise ConfigError(f"{key}.{k}: unknown key" + (f"; did you mean '{near[0]}'?" if near else
                                                          f"; valid keys: {', '.join(KEYS[kind])}"))
    name = raw.get("name")
    if not isinstance(name, str) or not name or name in names or name in RESERVED:
        raise ConfigError(f"{key}.name: give each source a distinct name (not teacher, cache or mixture), "
                          f"got {name!r}")
    names.add(name)
    if kind == "model" and not raw.get("model"):
        raise ConfigError(f"{key}.model: name the teacher (hub id, folder, .gguf or default)")
    weight = raw.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
        raise ConfigError(f"{key}.weight: must be a number >= 0, got {weight!r}")
    entry = {**raw, "kind": kind, "weight": float(weight)}
    if kind == "ema":
        rate, every = raw.get("update_rate", 0.01), raw.get("every", 1)
        if not isinstance(rate, (int, float)) or not 0 < rate <= 1:
            raise ConfigError(f"{key}.update_rate: must be in (0, 1], got {rate!r}")
        if not isinstance(every, int) or every < 1:
            raise ConfigError(f"{key}.every: must be a whole number >= 1, got {every!r}")
        entry.update(update_rate=float(rate), every=every)
    return entry


def _check_combine(teacher, entries: list[dict]) -> None:
    if teacher.combine != "route":
        return
    if not teacher.route_key:
        raise ConfigError("teacher.combine=route needs teacher.route_key: the data field naming each "
                          "example's teacher")
    if any(e["kind"] == "ema" for e in entries):
        raise ConfigError("teacher.combine=route: an ema source scores no route of its own; use combine=sum")
    if any(e["kind"] == "cache" for e in entries):
        raise ConfigError("teacher.combine=route with a cache in teacher.sources is not supported: a cache "
                          "holds no data fields; use combine=sum, or route live models")


def source_entries(teacher) -> list[dict]:
    """Checked entries of `teacher.sources`, weights normalised to sum to 1; [] for one teacher."""
    names: set = set()
    entries = [_entry(raw, f"teacher.sources[{i}]", names) for i, raw in enumerate(teacher.sources)]
    total = sum(e["weight"] for e in entries)
    if entries and total <= 0:
        raise ConfigError("teacher.sources: the weights sum to 0; give at least one source a positive weight")
    if entries:
        _check_combine(teacher, entries)
    if entries and teacher.cache:
        raise ConfigError("teacher.sources and teacher.cache are both set; put every teacher in teacher.sources "
                          "({name: c, cache: DIR})")
    return [{**e, "weight": e["weight"] / total} for e in entries]
