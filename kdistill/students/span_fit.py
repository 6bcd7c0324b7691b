"""Fit a student made of teacher layers, before training, to the spans of teacher layers it stands for.

A student copied from teacher layers k_0 < k_1 < ... runs block j where the teacher ran layers k_j ..
k_(j+1) - 1: block j should leave the stream the teacher had on entering layer k_(j+1) (the last block:
the teacher's final stream). The copy leaves what one layer of that span adds. The fit trains every
decoder weight (and the final norm's gain) so that each block's output, as the next block reads it
(`activations` "normed": the next input norm, gains included; the final norm after the last block),
matches the teacher's stream at the end of its span (`layer_map` `pairs: span`):

    loss = mean_j  mean_tokens |normed_j(student) - normed_(k_(j+1) - 1)(teacher)|^2 / E_j

E_j the teacher target's mean energy per token, so every block weighs alike; every real token counts,
prompts included. No output layer and no vocabulary in the loss: a step costs one forward and backward
of the student's blocks on its rows, no teacher pass (the targets are taken once, kept in bfloat16).
Adam at a constant lr, `rows_per_step` calibration rows a step in turn. The embeddings (tied with the
output layer) stay as copied. `repair.py` runs after it on the fitted student. Measured in README
"Quality per compute" (scripts/probe_span.py at step 0; scripts/bench_quality.py through training).
"""
from __future__ import annotations

import logging
import time

import torch

from kdistill.models.activations import capture
from kdistill.models.heads import decoder, decoder_layers
from kdistill.students.layer_map import span_pairs

log = logging.getLogger("kdistill")


def _chunks(batch: dict, rows: int) -> list[dict]:
    return [{k: v[i:i + rows] for k, v in batch.items()} for i in range(0, batch["input_ids"].shape[0], rows)]


@torch.no_grad()
def span_targets(teacher, chunk: dict, pairs: list[tuple[int, int]]) -> dict[int, torch.Tensor]:
    """{teacher layer: (N, D) bfloat16} its normed stream at the chunk's N real tokens."""
    with capture(teacher, {t: ("normed",) for _, t in pairs}) as found:
        decoder(teacher)(input_ids=chunk["input_ids"], attention_mask=chunk["attention_mask"], use_cache=False)
    real = chunk["attention_mask"].bool()
    return {t: found[t]["normed"][real].to(torch.bfloat16) for _, t in pairs}


def span_loss(student, chunk: dict, targets: dict[int, torch.Tensor], pairs, energy: dict[int, float]):
    """The fit's loss on one chunk, differentiable in the student's blocks. Shapes: chunk (B, T)"""
    real = chunk["attention_mask"].bool()
    with capture(student, {j: ("normed",) for j, _ in pairs}) as found:
        decoder(student)(input_ids=chunk["input_ids"], attention_mask=chunk["attention_mask"], use_cache=False)
    parts = [(found[j]["normed"][real].float() - targets[t].float()).pow(2).sum(-1).mean() / energy[t]
             for j, t in pairs]
    return torch.stack(parts).mean()


def fit_spans(student, teacher, batch: dict, layers: list[int], steps: int, lr: float = 2e-3,
              rows_per_step: int = 16, bar=None, seconds: float | None = None) -> dict:
    """Fit `student` (same width as `teacher`, block j copied from teacher layer layers[j]) in place;
    returns a report. `seconds`: stop after the step that reaches it (train.time_budget's share; the
    teacher's targets count), at least one step. Shapes: batch {"input_ids", "attention_mask"} (B, T),
    on the student's device."""
    start = time.perf_counter()
    pairs = span_pairs(layers, len(decoder_layers(teacher)))
    chunks = _chunks(batch, rows_per_step)
    targets = [span_targets(teacher, c, pairs) for c in chunks]
    energy = {t: float(torch.stack([tg[t].float().pow(2).sum(-1).mean() for tg in targets]).mean())
              for _, t in pairs}
    params = list(decoder_layers(student).parameters()) + list(decoder(student).norm.parameters())
    frozen = [(p, p.requires_grad) for p in student.parameters()]
    was_training = student.training
    student.requires_grad_(False).eval()
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    history = []
    try:
        for step in range(steps):
            k = step % len(chunks)
            loss = span_loss(student, chunks[k], targets[k], pairs, energy)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append(loss.item())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{history[-1]:.3f}")
            if seconds is not None and time.perf_counter() - start >= seconds:
                break
    finally:
        del opt
        for p, flag in frozen:
            p.requires_grad_(flag)
            p.grad = None
        student.train(was_training)
    first, last = (round(history[0], 4), round(history[-1], 4)) if history else (None, None)
    log.info("span fit: loss %s -> %s in %d steps%s", first, last, len(history),
             f" (of {steps}: its {seconds:.0f} s of the time budget)" if len(history) < steps else "")
    return {"pairs": [list(p) for p in pairs], "steps": len(history), "lr": lr,
            **({"seconds_limit": round(seconds, 1)} if seconds is not None else {}), "rows": int(batch["input_ids"].shape[0]),
            "loss_first": first, "loss_last": last,
            "seconds": round(time.perf_counter() - start, 1)}
