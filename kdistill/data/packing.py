"""Instruction records packed several to a row, with no attention across records (`data.pack`).

    rows, report = pack(train, seq_len, seed)      # after the held-out split: a group stays on one side
    batch = collate(rows, pad_id)                  # batches.collate adds "segments" (B, T)
    hidden = final_hidden(model, **model_inputs(batch, model))   # 4D mask and position ids

A packed row is its records' ids one after another. Each record keeps its mask, except its first id,
which never counts (nothing of its record comes before it), and `segments` gives each id its record's
index within the row. The model reads the row with position ids that restart at 0 in every record and
a block-diagonal causal mask, so each token's logits are those of its record read alone, and the loss
over packed rows is the loss over the records: the same tokens, the same count.

A record's last id is read as input too (it predicts the next record's first id, a target that never
counts), so the ids of a row's records sum to at most seq_len + 1. Packing is best-fit by length,
longest first, ties in a seeded order: deterministic for a seed, so a resumed run sees the same rows.

Where packing is exact: models whose forward takes a 4D additive mask and position ids as given
(PACKABLE, sdpa or eager attention, no sliding window shorter than a row); `why_not_packable` says
why another is not. Which runs may pack at all is config/checks.py `pack_refusals`.
"""
from __future__ import annotations

import bisect
import random

import torch

from kdistill.base.errors import ConfigError
from kdistill.config.checks import pack_refusals
from kdistill.models.heads import unwrap

PACKABLE = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM")
ATTENTION = ("sdpa", "eager")  # read the 4D mask as given (flash attention ignores it)


def for_run(cfg, train: list[dict], fmt: str, source) -> tuple[list[dict], dict]:
    """The training rows of a run (`train`: the examples after the held-out split) and data_report.json's
    "packing": {"packed": true, records, rows before and after, fill} or {"packed": false, "why"}; said
    either way. `fmt`: the data's format (text blocks are packed already). ConfigError when
    data.pack=true and the run cannot pack exactly."""
    why = why_not_pack(cfg, fmt, source)
    if why is not None:
        if fmt != "text":
            print(f"data: one record per row ({why})", flush=True)
        return train, {"packed": False, "why": why}
    rows, report = pack(train, cfg.train.seq_len, cfg.train.seed)
    print(f"data: packed {report['records']} training records into {report['rows_after']} rows of up to "
          f"{cfg.train.seq_len} tokens (filled {report['fill_before']:.0%} -> {report['fill_after']:.0%}; "
          "each record read alone: data.pack)", flush=True)
    return rows, {"packed": True, **report}


def why_not_pack(cfg, fmt: str, source) -> str | None:
    """None when the run packs its training rows, else why not (module docstring: where it is exact)."""
    pack_key = cfg.data.pack
    if pack_key is False:
        return "data.pack=false"
    if pack_key == "auto" and fmt == "text":
        return "plain text is packed into blocks already"
    refusals = pack_refusals(cfg)
    if refusals and pack_key is True:
        raise ConfigError(f"data.pack=true: {'; '.join(refusals)}; or set data.pack=auto or false")
    if refusals:
        return f"data.pack=auto: {refusals[0]}"
    models = [source.init_model] + [getattr(r, "model", None) for r in source.references()]
    found = next((w for m in models if m is not None and (w := why_not_packable(m, cfg.train.seq_len))), None)
    if found and pack_key is True:
        raise ConfigError(f"data.pack=true: the teacher {found}; set data.pack=auto or false")
    if found:
        return f"data.pack=auto: the teacher {found}"
    if pack_key == "auto" and cfg.student.kind != "llama":
        return (f"data.pack=auto with student.kind={cfg.student.kind}: set data.pack=true to pack (the student "
                "is checked when it loads)")
    return None


def check_student(student, seq_len: int) -> None:
    """ConfigError when a run whose rows are packed has a student that cannot read them exactly."""
    why = why_not_packable(student, seq_len)
    if why:
        raise ConfigError(f"data.pack: the training rows are packed, but the student {why}; set data.pack=false")


def pack(examples: list[dict], seq_len: int, seed: int) -> tuple[list[dict], dict]:
    """Rows of several examples each (module docstring) and the packing report: records, rows before and
    after, and fill (share of the rows' seq_len input positions that hold a token) before and after."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    order.sort(key=lambda i: -len(examples[i]["ids"]))  # stable: equal lengths keep the seeded order
    bins: list[list[int]] = []
    space: list[tuple[int, int]] = []  # (room left, bin), sorted: the tightest bin that fits comes first
    for i in order:
        n = len(examples[i]["ids"])
        at = bisect.bisect_left(space, (n, -1))
        if at < len(space):
            room, b = space.pop(at)
        else:
            room, b = seq_len + 1, len(bins)
            bins.append([])
        bins[b].append(i)
        if room - n >= 2:  # a record needs 2 ids at least
            bisect.insort(space, (room - n, b))
    rows = [packed_row([examples[i] for i in b]) for b in bins]
    return rows, {"records": len(examples), "rows_before": len(examples), "rows_after": len(rows),
                  "fill_before": fill(examples, seq_len), "fill_after": fill(rows, seq_len)}


def fill(rows: list[dict], seq_len: int) -> float:
    """Share of the input positions of `rows` (seq_len each) that read a token."""
    return sum(len(r["ids"]) - 1 for r in rows) / max(1, len(rows) * seq_len)


def packed_row(examples: list[dict]) -> dict:
    """One row of `examples`: ids, mask (False at each record's first id), segments, and weight when any
    example has token weights."""
    row: dict = {"ids": [], "mask": [], "segments": []}
    weighted = any("weight" in e for e in examples)
    if weighted:
        row["weight"] = []
    for k, e in enumerate(examples):
        row["ids"] += e["ids"]
        row["mask"] += [False] + list(e["mask"][1:])
        row["segments"] += [k] * len(e["ids"])
        if weighted:
            row["weight"] += list(e.get("weight") or [1.0] * len(e["ids"]))
    return row


def positions(segments: torch.Tensor) -> torch.Tensor:
    """Each token's position within its record (a row's padding counts from its own start).
    Shapes: segments (B, T) -> (B, T) long"""
    index = torch.arange(segments.shape[1], device=segments.device).expand_as(segments)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    return index - torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values


def block_mask(segments: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The additive attention mask of packed rows: a query sees the keys of its own record at or before
    it (0), nothing else (the dtype's lowest value); a padding query sees itself, so no row is empty.
    Shapes: segments (B, T), -1 for padding -> (B, 1, T, T)"""
    t = segments.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=segments.device).tril()
    same = segments[:, :, None] == segments[:, None, :]
    allowed = (same & causal & (segments >= 0)[:, None, :]) | torch.eye(t, dtype=torch.bool, device=segments.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def model_inputs(batch: dict, model) -> dict:
    """What a model reads of `batch`: input_ids and the 2D attention_mask, or for packed rows (a batch
    with "segments") the block mask in the model's dtype and position_ids. Shapes: (B, T) -> dict"""
    if "segments" not in batch:
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    dtype = unwrap(model).get_input_embeddings().weight.dtype
    dtype = dtype if dtype.is_floating_point else torch.float32
    return {"input_ids": batch["input_ids"], "attention_mask": block_mask(batch["segments"], dtype),
            "position_ids": positions(batch["segments"])}


def why_not_packable(model, seq_len: int) -> str | None:
    """Why `model` would not read packed rows exactly (None when it does): its class, its attention
    implementation, or a sliding window shorter than a row."""
    base = unwrap(model)
    name, config = type(base).__name__, base.config
    if name not in PACKABLE:
        return f"{name} is not among the models checked to read packed rows exactly ({', '.join(PACKABLE)})"
    attention = getattr(config, "_attn_implementation", None) or "eager"
    if attention not in ATTENTION:
        return f"{name} uses {attention} attention, which ignores the 4D mask (packing needs sdpa or eager)"
    window = getattr(config, "sliding_window", None)
    if window is not None and getattr(config, "use_sliding_window", True) and window < seq_len + 1:
        return f"{name} attends over a sliding window of {window} tokens, shorter than a row ({seq_len + 1})"
    return None
