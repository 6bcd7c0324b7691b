"""Held-out split, collation and a resumable batch order.

The order is a seeded permutation per epoch, so the data position of a run is just (epoch, index)
and a resumed run continues with exactly the batches it would have seen.
"""
from __future__ import annotations

import logging
import random

import torch

log = logging.getLogger("kdistill")


def split(examples: list[dict], heldout_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out about max(1, fraction * n) examples, whole groups at a time: examples that share a "group"
    (the prompt several samples answer) land on one side only, so held-out numbers never see a training
    prompt; an example without one is its own group (then this is a plain shuffle with `seed`). A single
    example is both sides (said); a single group is split per example (said)."""
    if len(examples) < 2:
        if examples:
            log.warning("the data gives 1 example: it is both the training and the held-out example, so held-out "
                        "numbers measure memorisation, not generalisation; give more records")
        return examples, examples
    groups: dict = {}
    for i, e in enumerate(examples):
        groups.setdefault(e.get("group", ("example", i)), []).append(i)
    order = list(groups.values())
    if len(order) == 1:
        log.warning("all %d examples share one prompt: held-out examples are split per example and share it "
                    "with training", len(examples))
        order = [[i] for i in order[0]]
    random.Random(seed).shuffle(order)
    n_held, held = max(1, round(heldout_fraction * len(examples))), []
    while len(held) < n_held and len(order) > 1:
        held += order.pop(0)
    return [examples[i] for g in order for i in g], [examples[i] for i in held]


def split_report(train: list[dict], held: list[dict]) -> dict:
    """What `split` did, for data_report.json: examples and prompt groups on each side."""
    def count(side):
        return len({e.get("group", ("example", id(e))) for e in side})
    return {"by": "prompt" if any("group" in e for e in train + held) else "example",
            "train_examples": len(train), "heldout_examples": len(held),
            "train_groups": count(train), "heldout_groups": count(held)}


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example. Packed rows (data/packing.py) add `segments`, each input
    token's record within its row (-1 for padding), from which `packing.model_inputs` makes the mask.

    Shapes: -> input_ids (B, T), attention_mask (B, T), targets (B, T), mask (B, T) bool, segments (B, T)
    """
    length = max(len(e["ids"]) for e in examples) - 1
    batch = {k: torch.full((len(examples), length), v, dtype=d) for k, v, d in [
        ("input_ids", pad_id, torch.long), ("attention_mask", 0, torch.long),
        ("targets", pad_id, torch.long), ("mask", False, torch.bool)]}
    for i, e in enumerate(examples):
        n = len(e["ids"]) - 1
        batch["input_ids"][i, :n] = torch.tensor(e["ids"][:-1])
        batch["attention_mask"][i, :n] = 1
        batch["targets"][i, :n] = torch.tensor(e["ids"][1:])
        batch["mask"][i, :n] = torch.tensor(e["mask"][1:])
    if any("segments" in e for e in examples):
        batch["segments"] = torch.full((len(examples), length), -1, dtype=torch.long)
        for i, e in enumerate(examples):
            segments = e.get("segments") or [0] * len(e["ids"])
            batch["segments"][i, :len(e["ids"]) - 1] = torch.tensor(segments[:-1])
    if any("weight" in e for e in examples):  # per-token loss weights (rationale vs answer), aligned with mask
        batch["weight"] = torch.zeros(len(examples), length)
        for i, e in enumerate(examples):
            w = e.get("weight") or [1.0] * len(e["ids"])
            batch["weight"][i, :len(e["ids"]) - 1] = torch.tensor(w[1:], dtype=torch.float32)
    return batch


class BatchStream:
    """Endless batches of `batch_size` examples; `state()`/`load_state()` give the exact position."""

    def __init__(self, examples: list[dict], batch_size: int, seed: int, pad_id: int, collate_fn=None):
        self.examples, self.batch_size, self.seed, self.pad_id = examples, batch_size, seed, pad_id
        self.collate_fn = collate_fn or (lambda picked: collate(picked, pad_id))
        self.epoch, self.index = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.examples)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def next(self) -> dict[str, torch.Tensor]:
        picked = []
        while len(picked) < self.batch_size:
            if self.index >= len(self._order):
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            picked.append(self.examples[self._order[self.index]])
            self.index += 1
        return self.collate_fn(picked)

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict) -> None:
        self.epoch, self.index = state["epoch"], state["index"]
        self._order = self._permutation(self.epoch)


class Lookahead:
    """A stream read `depth` batches ahead, so a source can start on their signals early (a served teacher
    asks its server when a batch is made). `state()` is the position after the last batch handed out, so a
    checkpoint and its resume see exactly the batches of a stream without look-ahead."""

    def __init__(self, stream, depth: int):
        self.stream, self.depth, self.queue = stream, depth, []

    def next(self):
        while len(self.queue) <= self.depth:
            before = self.stream.state()
            self.queue.append((before, self.stream.next()))
        return self.queue.pop(0)[1]

    def state(self) -> dict:
        return self.queue[0][0] if self.queue else self.stream.state()

    def load_state(self, state: dict) -> None:
        self.queue = []
        self.stream.load_state(state)


def heldout_batches(examples: list[dict], batch_size: int, pad_id: int, max_batches: int) -> list[dict]:
    return [collate(examples[i:i + batch_size], pad_id)
            for i in range(0, len(examples), batch_size)][:max_batches]


def to_device(batch: dict, device) -> dict:
    """Tensors and teacher signals (dataclasses of tensors, e.g. a cached batch's "signal") onto `device`."""
    import dataclasses

    def move(v):
        if isinstance(v, torch.Tensor):
            return v.to(device)
        if dataclasses.is_dataclass(v):
            return dataclasses.replace(v, **{f.name: move(getattr(v, f.name)) for f in dataclasses.fields(v)})
        return v

    return {k: move(v) for k, v in batch.items()}


def take_rows(batch: dict, rows: slice) -> dict:
    """The batch's rows `rows` (tensors and teacher-signal dataclasses alike). Shapes: (B, ...) -> (b, ...)"""
    import dataclasses

    def cut(v):
        if isinstance(v, torch.Tensor):
            return v[rows]
        if dataclasses.is_dataclass(v):
            return dataclasses.replace(v, **{f.name: cut(getattr(v, f.name)) for f in dataclasses.fields(v)})
        return v

    return {k: cut(v) for k, v in batch.items()}
