"""Batched sampling that stops computing finished rows.

    rows = sample_batch(model, prompts, pad_id, eos_id, max_new_tokens=112, temperature=0.8, top_p=0.95)
    # rows[i] = the new ids of prompts[i], cut after its first EOS (the EOS is kept)

HF `model.generate` keeps every row of a batch in the forward until the last row is done, so the rows that
already emitted EOS cost as much as the running ones. `sample_batch` runs its own KV-cached loop instead:
prefill the left-padded batch (attention mask, positions from the mask's cumsum, as HF does), then feed
only the last token of each running row. A row that emits EOS or reaches max_new_tokens leaves the batch:
its row is dropped from the `DynamicCache`, the attention mask and the positions, so the next forward is
smaller. Prompts keep their places; nothing is refilled or reordered.

Sampling: temperature 0 is greedy (argmax); otherwise logits / temperature, then the top-p nucleus
(`top_p_filter`), then `torch.multinomial` on torch's global RNG, so `torch.manual_seed(s)` before a call
makes it repeatable. The distribution is HF's TemperatureLogitsWarper + TopPLogitsWarper (no top-k).

Falls back to HF `model.generate` (same settings; EOS trimming as here) when the prefill's cache is not a
plain `DynamicCache` of `DynamicLayer`s, whose batch rows can be dropped: sliding-window or hybrid caches
(Gemma 3, Mistral with a window), linear-attention or static caches, or a model that returns no cache.
"""
from __future__ import annotations

import inspect
from collections.abc import Collection

import torch


PREFIX = 1024  # top_p_filter looks at the PREFIX most likely tokens first; a full sort only when they are not enough


def _outside(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Which tokens, sorted by probability, fall outside the nucleus. Shapes: probs (B, K) -> (B, K) bool"""
    drop = probs.cumsum(dim=-1) - probs >= top_p
    drop[..., 0] = False
    return drop


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Logits outside the nucleus set to -inf: per row, the most probable tokens whose probability
    reaches top_p, the fewest such (always the top token; among equal probabilities the lower id first).
    A token is kept iff the tokens sorted before it hold less than top_p.

    Fast path: the nucleus usually lies among the PREFIX most likely tokens, so those are taken with topk
    and ordered (value descending, id ascending) instead of sorting the whole vocabulary. It is used only
    when it keeps the full sort's tokens: in every row the kept tokens are strictly more likely than the
    PREFIX-th, so every token tied with a kept one is in the prefix (its probabilities are
    exp(logit - logsumexp), the sorted softmax's up to rounding). Otherwise the whole row is sorted. Shapes: (B, V) -> (B, V)"""
    if top_p >= 1.0:
        return logits
    if logits.shape[-1] > PREFIX:
        values, ids = logits.topk(PREFIX, dim=-1)                                       # (B, K)
        ids, by_id = ids.sort(dim=-1)                                                   # id ascending ...
        values, order = values.gather(-1, by_id).sort(dim=-1, descending=True, stable=True)  # ... within ties
        ids = ids.gather(-1, order)
        drop = _outside((values - logits.logsumexp(dim=-1, keepdim=True)).exp(), top_p)  # (B, K)
        last_kept = values.masked_fill(drop, float("inf")).min(dim=-1).values           # (B,)
        if bool((last_kept > values[:, -1]).all()):
            out = torch.full_like(logits, float("-inf"))
            return out.scatter(-1, ids, values.masked_fill(drop, float("-inf")))
    ordered, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    drop = _outside(ordered.softmax(dim=-1), top_p)
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def pick(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The next token of each row. Shapes: logits (B, V) -> (B,) long"""
    logits = logits.float()
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = top_p_filter(logits / temperature, top_p).softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1).squeeze(1)


def _eos_ids(eos_id) -> set[int]:
    if eos_id is None:
        return set()
    return {int(eos_id)} if isinstance(eos_id, int) else {int(e) for e in eos_id if e is not None}


def _trim(new: list[int], eos: set[int], pad_id: int) -> list[int]:
    """Cut after the first EOS; drop trailing padding (generate pads rows that stopped early)."""
    for j, t in enumerate(new):
        if t in eos:
            return new[:j + 1]
    while new and new[-1] == pad_id:
        new = new[:-1]
    return new


def _sliceable(cache) -> bool:
    from transformers.cache_utils import DynamicCache, DynamicLayer

    return type(cache) is DynamicCache and all(type(layer) is DynamicLayer for layer in cache.layers)


def _hf_generate(model, ids, mask, pad_id, eos, max_new_tokens, temperature, top_p) -> list[list[int]]:
    """The fallback: HF generate on the padded batch. Shapes: ids, mask (B, L) -> B lists"""
    sample = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(do_sample=False)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                         **sample)
    return [_trim(row[ids.shape[1]:].tolist(), eos, pad_id) for row in out]


@torch.no_grad()
def sample_batch(model, prompts: list[list[int]], pad_id: int, eos_id: int | Collection[int] | None,
                 max_new_tokens: int, temperature: float, top_p: float, device=None) -> list[list[int]]:
    """The new ids of each prompt, cut after its first EOS (any of `eos_id` when several), each at most
    max_new_tokens long; see the module docstring. Prompts must not be empty. `device` defaults to the
    model's. Shapes: B prompts -> B lists of <= max_new_tokens"""
    if any(not p for p in prompts):
        raise ValueError("sample_batch: every prompt needs at least one token")
    eos = _eos_ids(eos_id)
    device = torch.device(device) if device is not None else model.device
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)            # (B, L)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)     # (B, L)
    if max_new_tokens <= 0:
        return [[] for _ in prompts]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)                                                   # (B, L)
    last = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **last)
    cache = getattr(out, "cache", None)
    if not _sliceable(cache):
        return _hf_generate(model, ids, mask, pad_id, eos, max_new_tokens, temperature, top_p)
    rows: list[list[int]] = [[] for _ in prompts]
    running = list(range(len(prompts)))            # batch row j holds prompt running[j]
    nxt = positions[:, -1:] + 1                    # (b, 1) position of each running row's next token
    logits = out.logits[:, -1]                     # (b, V)
    while True:
        token = pick(logits, temperature, top_p)   # (b,)
        keep = []
        for j, (i, t) in enumerate(zip(running, token.tolist())):
            rows[i].append(t)
            if t not in eos and len(rows[i]) < max_new_tokens:
                keep.append(j)
        if not keep:
            return rows
        if len(keep) < len(running):               # finished rows leave the batch
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            mask, nxt, token = mask[index], nxt[index], token[index]
            running = [running[j] for j in keep]
        mask = torch.cat([mask, mask.new_ones(len(running), 1)], dim=-1)                           # (b, T + 1)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=nxt, cache=cache, use_cache=True)
        cache, logits, nxt = out.cache, out.logits[:, -1], nxt + 1
