"""Loss terms from config: validated once at build time, every error names its key path.

A term is a dict, e.g. `{"kind": "jsd", "weight": 1.0, "temperature": 2.0, "beta": 0.5}`:

| key              | kinds                      | meaning (default)                                             |
|------------------|----------------------------|---------------------------------------------------------------|
| kind             | all                        | a divergence (`divergences.DIVERGENCES`), "selective" or "ce" |
| weight           | all                        | number or schedule (1.0)                                      |
| temperature      | all                        | number or schedule; "entropy" schedule for teacher terms (1.0)|
| name             | all                        | name in the logs (the kind; `kind_i` if the kind repeats)     |
| missing_mass     | teacher terms              | sparse teacher policy: "renormalize" or "residual"            |
| beta, alpha, forward_weight, reverse_weight | the divergence taking it (or selective's) | its parameter |
| divergence       | selective                  | divergence compared on the top-k ("forward_kl")               |
| top_k            | selective                  | teacher's top-k ids compared (100)                            |
| entropy_threshold| selective                  | keep positions whose teacher entropy (nats, at T) exceeds it (0.5) |
| label_smoothing  | ce                         | ε in [0, 1) (0.0)                                             |
| gamma, normalize, advantage_clip, ratio_clip | reverse_kl_pg | discount (0), ÷ discount weights (true), clips (10, 5) (`policy`) |
| top_k            | uld, hybrid                | probabilities of each side compared by uld (100) (`cross`)    |
| divergence       | hybrid                     | exact divergence on the matched strings ("forward_kl")        |
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace

from kdistill.base.errors import ConfigError
from kdistill.losses import cross, policy
from kdistill.losses.divergences import DIVERGENCES
from kdistill.losses.schedules import EntropyTemperature, Schedule
from kdistill.losses.signals import MISSING_MASS

KINDS = (*DIVERGENCES, "selective", "ce", policy.KIND, *cross.KINDS)
COMMON_KEYS = ("kind", "weight", "temperature", "name")
SELECTIVE_KEYS = ("divergence", "top_k", "entropy_threshold", "missing_mass")
SCHEDULE_KEYS = {"constant": ("value",), "linear": ("start", "end"), "cosine": ("start", "end"),
                 "step": ("values", "boundaries"), "entropy": ("confident", "uncertain")}


@dataclass(frozen=True)
class Term:
    """One validated loss term."""

    name: str
    kind: str
    weight: Schedule
    temperature: Schedule | EntropyTemperature
    divergence: str = ""  # the divergence computed: the kind itself, selective's choice, "" for ce
    params: dict = field(default_factory=dict)
    missing_mass: str = "renormalize"
    label_smoothing: float = 0.0
    top_k: int = 100
    entropy_threshold: float = 0.5


def _suggest(word: str, valid) -> str:
    close = difflib.get_close_matches(str(word), list(valid), n=1)
    return f"; did you mean {close[0]!r}?" if close else f" (valid: {', '.join(valid)})"


def number(value, key: str, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, hint: str = "") -> float:
    """A float from config (YAML may give '1e-3' as a string), checked against its bounds."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    too_low = low is not None and (x <= low if low_open else x < low)
    too_high = high is not None and (x >= high if high_open else x > high)
    if too_low or too_high:
        lo = "" if low is None else f"{low} {'<' if low_open else '<='} "
        hi = "" if high is None else f" {'<' if high_open else '<='} {high}"
        raise ConfigError(f"{key}: must satisfy {lo}{key.rsplit('.', 1)[-1]}{hi}, got {x}{hint}")
    return x


def _check_keys(spec: dict, valid, key: str) -> None:
    for k in spec:
        if k not in valid:
            raise ConfigError(f"{key}.{k}: unknown key{_suggest(k, valid)}")


def parse_schedule(spec, key: str, positive: bool, allow_entropy: bool = False):
    """A number, or a schedule dict, as a Schedule (or EntropyTemperature); values > 0 or >= 0."""
    bound = dict(low=0.0, low_open=positive)
    if not isinstance(spec, dict):
        x = number(spec, key, **bound)
        return Schedule("constant", x, x)
    kinds = tuple(k for k in SCHEDULE_KEYS if allow_entropy or k != "entropy")
    kind = spec.get("schedule")
    if kind not in kinds:
        raise ConfigError(f"{key}.schedule: unknown schedule {kind!r}{_suggest(kind, kinds)}")
    _check_keys(spec, ("schedule", *SCHEDULE_KEYS[kind]), key)
    missing = [k for k in SCHEDULE_KEYS[kind] if k not in spec]
    if missing:
        raise ConfigError(f"{key}: schedule {kind!r} needs {', '.join(missing)}")
    if kind == "entropy":
        return EntropyTemperature(number(spec["confident"], f"{key}.confident", **bound),
                                  number(spec["uncertain"], f"{key}.uncertain", **bound))
    if kind == "constant":
        x = number(spec["value"], f"{key}.value", **bound)
        return Schedule("constant", x, x)
    if kind == "step":
        return _step_schedule(spec, key, bound)
    return Schedule(kind, number(spec["start"], f"{key}.start", **bound),
                    number(spec["end"], f"{key}.end", **bound))


def _step_schedule(spec: dict, key: str, bound: dict) -> Schedule:
    values, boundaries = spec["values"], spec["boundaries"]
    if not isinstance(values, list) or not isinstance(boundaries, list) or len(values) != len(boundaries) + 1:
        raise ConfigError(f"{key}: step needs lists with len(values) == len(boundaries) + 1")
    vals = tuple(number(v, f"{key}.values[{i}]", **bound) for i, v in enumerate(values))
    bs = tuple(number(b, f"{key}.boundaries[{i}]", 0.0, 1.0, low_open=True) for i, b in enumerate(boundaries))
    if list(bs) != sorted(bs):
        raise ConfigError(f"{key}.boundaries: must be ascending, got {list(bs)}")
    return Schedule("step", values=vals, boundaries=bs)


def _divergence_params(spec: dict, divergence: str, key: str) -> dict:
    params = dict(DIVERGENCES[divergence][1])
    for name in params:
        if name in spec:
            params[name] = number(spec[name], f"{key}.{name}")
    if "beta" in params:
        number(params["beta"], f"{key}.beta", 0.0, 1.0, True, True,
               "; for the endpoints use kind 'forward_kl' (beta 0) or 'reverse_kl' (beta 1)")
    if "alpha" in params:
        number(params["alpha"], f"{key}.alpha", 0.0, 1.0, high_open=True)
    for name in ("forward_weight", "reverse_weight"):
        if name in params:
            number(params[name], f"{key}.{name}", 0.0)
    return params


def _kind(spec: dict, key: str, extra=()) -> tuple[str, str]:
    """The term's kind and the divergence it computes (selective's choice, "" for ce)."""
    kind = spec.get("kind")
    if kind is None:
        raise ConfigError(f"{key}.kind: missing; expected one of {', '.join(KINDS)}")
    if kind not in KINDS:
        raise ConfigError(f"{key}.kind: unknown divergence {kind!r}{_suggest(kind, (*KINDS, *extra))}")
    if kind not in ("selective", "hybrid"):
        return kind, "" if kind in ("ce", "uld") else kind
    divergence = spec.get("divergence", "forward_kl")
    if divergence not in DIVERGENCES:
        raise ConfigError(f"{key}.divergence: unknown divergence {divergence!r}{_suggest(divergence, DIVERGENCES)}")
    return kind, divergence


def _valid_keys(kind: str, divergence: str) -> tuple[str, ...]:
    if kind == "ce":
        return (*COMMON_KEYS, "label_smoothing")
    if kind == policy.KIND:
        return (*COMMON_KEYS, "missing_mass", *policy.DEFAULTS)
    if kind == "uld":
        return (*COMMON_KEYS, "top_k", "missing_mass")
    own = SELECTIVE_KEYS if kind == "selective" else ("divergence", "top_k", "missing_mass") if kind == "hybrid" \
        else ("missing_mass",)
    return (*COMMON_KEYS, *own, *DIVERGENCES[divergence][1])


def parse_term(spec, key: str, extra: dict | None = None) -> Term:
    """One term dict (kind, weight, temperature, per-kind keys) as a Term; ConfigError names the key.
    `extra`: kind -> parser for kinds defined elsewhere (feature terms: `feature_terms.PARSERS`)."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{key}: expected a mapping with a 'kind', got {spec!r}")
    if extra and spec.get("kind") in extra:
        return extra[spec["kind"]](spec, key)
    kind, divergence = _kind(spec, key, tuple(extra or ()))
    _check_keys(spec, _valid_keys(kind, divergence), key)
    missing_mass = spec.get("missing_mass", "renormalize")
    if missing_mass not in MISSING_MASS:
        raise ConfigError(f"{key}.missing_mass: unknown policy {missing_mass!r}{_suggest(missing_mass, MISSING_MASS)}")
    return Term(
        name=str(spec.get("name", kind)), kind=kind, divergence=divergence, missing_mass=missing_mass,
        weight=parse_schedule(spec.get("weight", 1.0), f"{key}.weight", positive=False),
        temperature=parse_schedule(spec.get("temperature", 1.0), f"{key}.temperature", positive=True,
                                   allow_entropy=kind not in ("ce", policy.KIND, *cross.KINDS)),
        params=policy.parse_params(spec, key) if kind == policy.KIND
        else _divergence_params(spec, divergence, key) if divergence else {},
        label_smoothing=number(spec.get("label_smoothing", 0.0), f"{key}.label_smoothing", 0.0, 1.0,
                               high_open=True),
        top_k=_top_k(spec.get("top_k", 100), f"{key}.top_k"),
        entropy_threshold=number(spec.get("entropy_threshold", 0.5), f"{key}.entropy_threshold", 0.0),
    )


def _top_k(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit() or int(value) < 1:
        raise ConfigError(f"{key}: expected a whole number >= 1, got {value!r}")
    return int(value)


def parse_terms(specs, key: str = "loss", extra: dict | None = None) -> list[Term]:
    """The config's list of term dicts as Terms with unique names (`kind_i` when a kind repeats)."""
    if not isinstance(specs, (list, tuple)) or not specs:
        raise ConfigError(f"{key}.terms: expected a non-empty list of terms, got {specs!r}")
    terms = [parse_term(spec, f"{key}.terms[{i}]", extra) for i, spec in enumerate(specs)]
    explicit = [t.name for t, s in zip(terms, specs) if "name" in s]
    renamed = []
    for i, (term, spec) in enumerate(zip(terms, specs)):
        name = term.name
        if "name" not in spec and (sum(t.kind == term.kind for t in terms) > 1 or name in explicit):
            name = f"{term.kind}_{i}"
        if name in [t.name for t in renamed]:
            raise ConfigError(f"{key}.terms[{i}].name: {name!r} is used by another term")
        renamed.append(replace(term, name=name))
    return renamed
