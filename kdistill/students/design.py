"""Size LLaMA-style students for a teacher and a budget, deep-narrow first (seed 004).

For every width the teacher's attention can be cut to (whole heads of the teacher's head size, KV groups
no larger than the teacher's), the depth that meets the budget; candidates within 15% of the budget and
no deeper than the teacher are listed deepest first, and the deepest is chosen: at a fixed size, deep
and narrow beats shallow and wide for small models (MobileLLM, Liu et al. 2024), and a student no
deeper or wider than its teacher can start from the teacher's own layers and slices (`prune.py`).

Numbers, per candidate (V vocabulary rows, D width, L layers, H heads, G KV heads, d = D/H, F FFN):
- parameters = V·D (tied embedding and head) + L·(2·D·H·d + 2·D·G·d + 3·D·F + 2·D) + D, exactly what
  `LlamaForCausalLM` instantiates (tested);
- FLOPs per token = 2·(L·(2·D·H·d + 2·D·G·d + 3·D·F) + V·D) for the matrix products plus 4·L·c·H·d for
  attention over a context of c tokens (the embedding lookup costs nothing);
- memory of the weights at fp32 (4 bytes), fp16 (2) and int4 (4.5 bits: 4-bit codes and an fp16 scale
  per 32, as Q4_0);
- expected speed-up = teacher FLOPs / student FLOPs per token: compute-bound this is the speed ratio,
  and at batch 1 decoding reads each weight once per token, so the weight-bytes ratio is about the same.
  Measure the real one with `kdistill eval` (many thin layers run less efficiently than few wide ones).
"""
from __future__ import annotations

import re

import yaml

from kdistill.base.errors import ConfigError
from kdistill.students.llama import llama_blocks_missing, teacher_sizes, text_config

TOLERANCE = 0.15
INT4_BYTES = 4.5 / 8


def layer_parameters(s: dict) -> int:
    d = s["hidden_size"] // s["num_heads"]
    hd = s["hidden_size"]
    return 2 * hd * s["num_heads"] * d + 2 * hd * s["num_kv_heads"] * d + 3 * hd * s["intermediate_size"] + 2 * hd


def llama_parameters(s: dict, vocab_size: int) -> int:
    """Exact parameter count of the tied-embedding `LlamaForCausalLM` with sizes `s`."""
    return vocab_size * s["hidden_size"] + s["num_layers"] * layer_parameters(s) + s["hidden_size"]


def flops_per_token(s: dict, vocab_size: int, context: int) -> int:
    d = s["hidden_size"] // s["num_heads"]
    matmul = s["num_layers"] * (layer_parameters(s) - 2 * s["hidden_size"]) + vocab_size * s["hidden_size"]
    return 2 * matmul + 4 * s["num_layers"] * context * s["num_heads"] * d


def kv_heads_for(heads: int, teacher: dict) -> int | None:
    """Fewest KV heads for `heads` query heads whose groups fit in the teacher's, or None."""
    group = teacher["num_heads"] // teacher["num_kv_heads"]
    for g in range(1, heads + 1):
        if heads % g == 0 and heads // g <= group and g <= teacher["num_kv_heads"]:
            return g
    return None


def widths(teacher: dict, head_dim: int) -> list[dict]:
    """Every width the teacher's attention can be cut to; FFN at the teacher's ratio (multiple of 32)."""
    out = []
    for heads in range(1, teacher["num_heads"] + 1):
        kv = kv_heads_for(heads, teacher)
        if kv is None:
            continue
        hidden = heads * head_dim
        ffn = min(teacher["intermediate_size"],
                  max(32, round(hidden * teacher["intermediate_size"] / teacher["hidden_size"] / 32) * 32))
        out.append({"hidden_size": hidden, "num_heads": heads, "num_kv_heads": kv, "intermediate_size": ffn})
    return out


def measure(s: dict, vocab_size: int, context: int, teacher_flops: int) -> dict:
    n = llama_parameters(s, vocab_size)
    flops = flops_per_token(s, vocab_size, context)
    return {**s, "parameters": n, "flops_per_token": flops, "fp32_mb": 4 * n / 2**20, "fp16_mb": 2 * n / 2**20,
            "int4_mb": INT4_BYTES * n / 2**20, "speedup": teacher_flops / flops}


def candidates(teacher_config, target: int, context: int = 512) -> tuple[list[dict], dict]:
    """Students of about `target` parameters, deepest first. Returns (candidates, the teacher's numbers)."""
    t = teacher_sizes(teacher_config)
    vocab = text_config(teacher_config).vocab_size
    head_dim = t["hidden_size"] // t["num_heads"]
    if llama_blocks_missing(teacher_config) is None:  # students cut heads from the teacher's: its head size
        head_dim = getattr(teacher_config, "head_dim", None) or head_dim
    if t["hidden_size"] != t["num_heads"] * head_dim:
        raise ConfigError(f"the teacher's width {t['hidden_size']} is not heads x head size; "
                          "kdistill design handles LLaMA-style teachers only")
    teacher = measure(t, vocab, context, 1)
    teacher["speedup"] = 1.0
    found = []
    for w in widths(t, head_dim):
        per_layer = layer_parameters(w)
        layers = round((target - vocab * w["hidden_size"] - w["hidden_size"]) / per_layer)
        if not 1 <= layers <= t["num_layers"]:
            continue
        c = measure({"num_layers": layers, **w}, vocab, context, teacher["flops_per_token"])
        if abs(c["parameters"] - target) <= TOLERANCE * target:
            found.append(c)
    found.sort(key=lambda c: (-c["num_layers"], c["hidden_size"]))
    return found, teacher


def parse_count(text: str) -> int:
    """'30M', '1.1B', '250k', '3e7' or '30000000' -> an integer count."""
    m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([kKmMbB]?)\s*", str(text))
    scale = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9}
    try:
        return int(float(m.group(1)) * scale[m.group(2).lower()])
    except (AttributeError, ValueError):
        raise ConfigError(f"--params {text!r}: give a count like 30M, 1.1B or 250000") from None


def table(found: list[dict], teacher: dict, chosen: int, context: int) -> str:
    head = (f"{'':2s}{'layers':>6s}{'width':>7s}{'heads':>6s}{'kv':>4s}{'ffn':>6s}{'parameters':>14s}"
            f"{'MFLOP/tok':>11s}{'fp32 MB':>9s}{'fp16 MB':>9s}{'int4 MB':>9s}{'speed-up':>9s}")
    rows = [head]
    for i, c in enumerate([teacher] + found):
        mark = "T " if i == 0 else ("* " if i - 1 == chosen else "  ")
        rows.append(f"{mark}{c['num_layers']:6d}{c['hidden_size']:7d}{c['num_heads']:6d}{c['num_kv_heads']:4d}"
                    f"{c['intermediate_size']:6d}{c['parameters']:14,d}{c['flops_per_token'] / 1e6:11.1f}"
                    f"{c['fp32_mb']:9.1f}{c['fp16_mb']:9.1f}{c['int4_mb']:9.1f}{c['speedup']:8.2f}x")
    rows.append(f"T = teacher, * = chosen; FLOPs per token at a context of {context} tokens")
    return "\n".join(rows)


def student_yaml(c: dict, teacher_spec: str, teacher: dict, command: str) -> str:
    keys = ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "intermediate_size")
    data = {"teacher": {"model": teacher_spec}, "student": {"kind": "llama", **{k: c[k] for k in keys}}}
    ratio = teacher["parameters"] / c["parameters"]
    note = (f"# Written by `{command}`.\n# {c['parameters']:,} parameters ({ratio:.2f}x fewer than the teacher's "
            f"{teacher['parameters']:,}), expected speed-up {c['speedup']:.2f}x.\n")
    return note + yaml.safe_dump(data, sort_keys=False)


def instantiated_parameters(config) -> int:
    """Parameters of the model `config` describes, counted on the meta device (no memory used)."""
    import torch
    from transformers import AutoModelForCausalLM

    from kdistill.models.heads import count_parameters

    with torch.device("meta"):
        return count_parameters(AutoModelForCausalLM.from_config(config))
