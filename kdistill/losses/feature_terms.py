"""Feature loss terms from config: hidden states and attention of mapped (student, teacher) layer pairs.

    loss:
      terms:
        - {kind: forward_kl}
        - {kind: hidden_mse, weight: 1.0, pairs: from_init, target: normed}
        - {kind: attention_map, weight: 0.1, pairs: [[0, 0], [3, 11], [7, 29]], rows: 16}

| key    | kinds                          | meaning (default)                                                  |
|--------|--------------------------------|--------------------------------------------------------------------|
| pairs  | all feature kinds              | uniform, from_init (the teacher layers the student was copied from), span (the last teacher layer each copied layer stands for), cka (linear CKA + monotone DP at run start), or [[s, t], ...] (uniform) |
| target | hidden_mse, hidden_cosine      | residual (the stream leaving the block) or normed (as the next block reads it) (normed) |
| rows   | attention_map                  | query rows sampled per sequence (16)                               |

A term's per-token value is the mean over its pairs; it is divided by the global token count like every
other term. hidden_* and attention_output pass the student's activation through a trainable projection
per pair (identity when widths are equal, linear when they differ; `kdistill/train/features.py`).
"""
from __future__ import annotations

from dataclasses import dataclass

from kdistill.base.errors import ConfigError
from kdistill.losses.config import _check_keys, parse_schedule
from kdistill.losses.schedules import Schedule

HIDDEN_KINDS = ("hidden_mse", "hidden_cosine")
KINDS = (*HIDDEN_KINDS, "attention_output", "attention_map")
PAIR_RULES = ("uniform", "from_init", "span", "cka")
TARGETS = ("residual", "normed")


@dataclass(frozen=True)
class FeatureTerm:
    """One validated feature term; `resolved` holds its (student, teacher) layer pairs once models exist."""

    name: str
    kind: str
    weight: Schedule
    pairs: str | tuple = "uniform"
    target: str = "normed"
    rows: int = 16
    resolved: tuple = ()
    key: str = ""  # where it is in the config (`loss.terms[2]`), for errors found once models exist

    @property
    def activation(self) -> str:
        """What `activations.capture` keeps for this term on each side."""
        return {"attention_output": "attn_out", "attention_map": "qk"}.get(self.kind, self.target)

    @property
    def projected(self) -> bool:
        return self.kind != "attention_map"


def _pairs(value, key: str):
    if isinstance(value, str):
        if value not in PAIR_RULES:
            raise ConfigError(f"{key}: {value!r} is not a pairing; use {', '.join(PAIR_RULES)} or a list like "
                              "[[0, 0], [1, 5]] of [student layer, teacher layer]")
        return value
    ok = isinstance(value, (list, tuple)) and value and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                             and x >= 0 for x in p) for p in value)
    if not ok:
        raise ConfigError(f"{key}: expected {', '.join(PAIR_RULES)} or a non-empty list of [student layer, "
                          f"teacher layer] pairs of whole numbers >= 0, got {value!r}")
    students = [p[0] for p in value]
    if len(set(students)) != len(students):
        raise ConfigError(f"{key}: student layer {next(s for s in students if students.count(s) > 1)} appears in "
                          "two pairs; give each student layer one teacher layer")
    return tuple((int(s), int(t)) for s, t in value)


def _valid_keys(kind: str) -> tuple[str, ...]:
    own = ("target",) if kind in HIDDEN_KINDS else ("rows",) if kind == "attention_map" else ()
    return ("kind", "weight", "name", "pairs", *own)


def parse_feature_term(spec: dict, key: str) -> FeatureTerm:
    """One feature term dict as a FeatureTerm; ConfigError names the key."""
    kind = spec["kind"]
    _check_keys(spec, _valid_keys(kind), key)
    target = spec.get("target", "normed")
    if target not in TARGETS:
        raise ConfigError(f"{key}.target: {target!r} is not a target; use residual or normed")
    rows = spec.get("rows", 16)
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ConfigError(f"{key}.rows: expected a whole number >= 1 (query rows per sequence), got {rows!r}")
    weight = parse_schedule(spec.get("weight", 1.0), f"{key}.weight", positive=False)
    return FeatureTerm(name=str(spec.get("name", kind)), kind=kind, weight=weight,
                       pairs=_pairs(spec.get("pairs", "uniform"), f"{key}.pairs"), target=target, rows=rows,
                       key=key)


PARSERS = {kind: parse_feature_term for kind in KINDS}
