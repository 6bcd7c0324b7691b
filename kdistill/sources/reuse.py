"""A teacher source whose signal for a training row is kept at the row's first visit and reused at the next
(`teacher.reuse_topk`): a teacher cache written as training goes, in memory.

Small teacher-written corpora are read for many epochs (the demo: 66 rows, ~4 epochs in ten minutes), and
a live teacher repeats the same forward at every visit: on a CPU that is close to half of each step. With
`teacher.reuse_topk: K` every batch's signal is the teacher's top-K log-probabilities (`SparseSignal`, the
same signal a `kdistill cache` of k=K gives; each loss term's `missing_mass` says what becomes of the
rest): rows seen before are read from memory, a batch holding a row never seen runs the teacher once and
keeps its rows. So the first epoch costs what it did and every later one skips the teacher; the
objective is the same at every visit.

A row is known by what the teacher reads of it: its real tokens and, for packed rows, where each record
starts (padding does not count, so a row batched with longer ones is the same row). Stored per real
position: K int32 ids and K float32 log-probabilities (8·K bytes; 66 rows of 128 tokens at K = 50 hold
3.4 MB). Past `teacher.reuse_max_mb` new rows are no longer kept (said once in the log); they are scored
live at every visit, in the same top-K form. Held-out metrics and the final comparison are against the
inner source (the live teacher), never the kept signal.
"""
from __future__ import annotations

import hashlib
import logging
import math

import torch

from kdistill.losses.signals import DENSE, SPARSE, SparseSignal

log = logging.getLogger("kdistill")
CHUNK = 1024  # positions whose logits are materialised at once when a dense signal is cut to its top-K


def row_keys(batch: dict) -> list[bytes]:
    """One key per row of `batch`: a digest of its real tokens (and its records' segments, when packed).
    Shapes: batch input_ids, attention_mask (B, T)"""
    real = batch["attention_mask"].bool()
    keys = []
    for i in range(real.shape[0]):
        h = hashlib.sha256(batch["input_ids"][i][real[i]].to(torch.int64).cpu().numpy().tobytes())
        if "segments" in batch:
            h.update(b"|" + batch["segments"][i][real[i]].to(torch.int64).cpu().numpy().tobytes())
        keys.append(h.digest())
    return keys


@torch.no_grad()
def top_k(signal, k: int) -> SparseSignal:
    """A dense or sparse signal as its top-k (a sparse one with at most k slots is kept as it is).
    Shapes: signal over (B, T) -> ids, logprobs (B, T, k')"""
    if signal.form == SPARSE:
        if signal.k <= k:
            return signal
        logprobs, slot = signal.logprobs.topk(k, dim=-1)
        return SparseSignal(ids=signal.ids.gather(-1, slot), logprobs=logprobs)
    if signal.form != DENSE:
        raise ValueError(f"teacher.reuse_topk keeps dense or sparse signals, not {signal.form}")
    made = signal.logits if signal.logits is not None else signal.hidden
    (b, t), device, k = made.shape[:2], made.device, min(k, signal.vocab_size)
    ids = torch.empty(b * t, k, dtype=torch.long)
    logprobs = torch.empty(b * t, k)
    for start in range(0, b * t, CHUNK):
        rows = torch.arange(start, min(start + CHUNK, b * t))
        part = SparseSignal.from_logits(signal.take(rows).logits, k)
        ids[rows], logprobs[rows] = part.ids.cpu(), part.logprobs.cpu()
    return SparseSignal(ids=ids.view(b, t, k).to(device), logprobs=logprobs.view(b, t, k).to(device))


class ReuseSource:
    """`inner` (a static source of dense or sparse signals) with each training row's top-`k` kept in memory
    up to `max_mb` megabytes. Every member but `signal` is the inner source's."""

    def __init__(self, inner, k: int, max_mb: float):
        if not inner.static:
            raise ValueError(f"teacher.reuse_topk needs a teacher whose signal never changes, not '{inner.against}'")
        self.inner, self.k, self.max_bytes = inner, k, int(max_mb * 2 ** 20)
        self.kept: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}  # key -> ids (L, k) int32, logprobs (L, k)
        self.bytes = self.hits = self.misses = 0
        self._full = self._said = False

    # the signal: kept rows from memory, a batch with any new row from the inner source
    def signal(self, batch: dict, vocab_size: int):
        keys, real = row_keys(batch), batch["attention_mask"].bool()
        new = sum(key not in self.kept for key in keys)
        self.hits, self.misses = self.hits + len(keys) - new, self.misses + new
        if not new:
            if not self._said:
                log.info("teacher.reuse_topk: a batch of kept rows only, read without the teacher (%d rows kept, "
                         "%.1f MB)", len(self.kept), self.bytes / 2 ** 20)
                self._said = True
            return self._assemble(keys, real)
        sparse = top_k(self.inner.signal(batch, vocab_size), self.k)
        for i, key in enumerate(keys):
            if key not in self.kept:
                self._keep(key, sparse.ids[i][real[i]], sparse.logprobs[i][real[i]])
        return sparse

    def _keep(self, key: bytes, ids: torch.Tensor, logprobs: torch.Tensor) -> None:
        size = ids.numel() * 8
        if self.bytes + size > self.max_bytes:
            if not self._full:
                log.info("teacher.reuse_topk: %d rows kept in %.0f MB (teacher.reuse_max_mb); later new rows are "
                         "scored by the teacher at every visit", len(self.kept), self.bytes / 2 ** 20)
                self._full = True
            return
        self.kept[key] = (ids.to("cpu", torch.int32), logprobs.to("cpu", torch.float32))
        self.bytes += size

    def _assemble(self, keys: list[bytes], real: torch.Tensor) -> SparseSignal:
        """The kept rows at their real positions; padded positions hold a uniform distribution over k ids
        (finite, and never in the loss: their mask is 0). Shapes: real (B, T) -> ids, logprobs (B, T, k)"""
        k = self.kept[keys[0]][0].shape[-1]
        b, t = real.shape
        ids = torch.arange(k).expand(b, t, k).clone()
        logprobs = torch.full((b, t, k), -math.log(k))
        for i, key in enumerate(keys):
            kept_ids, kept_logprobs = self.kept[key]
            ids[i][real[i].cpu()], logprobs[i][real[i].cpu()] = kept_ids.long(), kept_logprobs
        return SparseSignal(ids=ids.to(real.device), logprobs=logprobs.to(real.device))

    def stats(self) -> dict:
        """Row visits whose row was kept before (hits) or not (misses), rows kept, their megabytes."""
        return {"hits": self.hits, "misses": self.misses, "rows": len(self.kept), "mb": round(self.bytes / 2 ** 20, 2)}

    # everything else is the inner source's (members outside the protocol too: a model source's folder)
    def __getattr__(self, name: str):
        if name == "inner":  # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def against(self) -> str:
        return self.inner.against

    @property
    def tokenizer(self):
        return self.inner.tokenizer

    @property
    def vocab_size(self) -> int:
        return self.inner.vocab_size

    @property
    def static(self) -> bool:
        return True

    @property
    def can_score_new_text(self) -> bool:
        return self.inner.can_score_new_text

    @property
    def provides_activations(self) -> bool:
        return self.inner.provides_activations

    @property
    def init_model(self):
        return self.inner.init_model

    @property
    def prefetch(self) -> int:
        return self.inner.prefetch

    def load_examples(self, cfg, device) -> list[dict]:
        return self.inner.load_examples(cfg, device)

    def collate(self, examples: list[dict], pad_id: int) -> dict:
        return self.inner.collate(examples, pad_id)

    def calibration_batch(self, examples: list[dict], pad_id: int) -> dict:
        return self.inner.calibration_batch(examples, pad_id)

    def rollout_model(self):
        return self.inner.rollout_model()

    def signal_and_activations(self, batch: dict, vocab_size: int, request: dict) -> tuple:
        return self.inner.signal_and_activations(batch, vocab_size, request)

    def references(self) -> list:
        return self.inner.references()

    def final_reference(self, cfg, device, dtype):
        return self.inner.final_reference(cfg, device, dtype)

    def identity(self) -> dict:
        return self.inner.identity()

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)

    def attach_student(self, student) -> None:
        self.inner.attach_student(student)

    def after_step(self, student, step: int) -> None:
        self.inner.after_step(student, step)

    def release_init(self) -> None:
        self.inner.release_init()
