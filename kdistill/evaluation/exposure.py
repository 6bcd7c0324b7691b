"""Exposure bias: how each model grades the other's own continuations of held-out prompts.

    metrics = exposure_metrics(student, teacher, heldout_batches, tokenizer, device, max_new_tokens=32)

Teacher-forced metrics (held-out KL) only see the data's prefixes; at generation time the student
conditions on its own text. Here the student continues each held-out prompt (`rollout.batch_prompts`:
the prompt part of a record, or the first `prompt_tokens` of a text block) by sampling at temperature 1,
and the teacher scores it; then the other way round. Both are mean NLL in nats per generated token
(before the first EOS), measured against the live teacher:

| key                              | value                                                        |
|----------------------------------|--------------------------------------------------------------|
| teacher_nll_of_student_samples   | -log p_teacher(y) of the student's sampled tokens (lower: the student writes what the teacher would) |
| student_nll_of_teacher_samples   | -log q_student(y) of the teacher's sampled tokens (lower: the student covers the teacher) |
| student_sample_tokens, teacher_sample_tokens | tokens scored                                    |

Sampling uses a generator seeded with `seed`, so two students are compared on the same draws of chance.
"""
from __future__ import annotations

import torch

from kdistill.data import rollout
from kdistill.data.batches import to_device
from kdistill.models.heads import head_weight


@torch.no_grad()
def nll_sums(model, batch: dict, vocab_size: int) -> tuple[float, int]:
    """Summed -log p(target) of the masked tokens, and their count. Shapes: batch (B, T) -> float, int"""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    logits = rollout.to_vocab(logits.float(), vocab_size)
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["targets"], reduction="none")
    mask = batch["mask"].bool()
    return float(torch.where(mask, nll, 0.0).sum()), int(mask.sum())


def graded_samples(writer, grader, batches: list[dict], eos_ids: set[int], pad_id: int, vocab_size: int,
                   device, max_new_tokens: int, prompt_tokens: int, seq_len: int, seed: int) -> tuple[float, int]:
    """Mean NLL under `grader` of what `writer` samples from the batches' prompts, and the token count."""
    total, count = 0.0, 0
    generator = torch.Generator(device=torch.device(device))
    for i, batch in enumerate(batches):
        generator.manual_seed(seed * 1_000_003 + i)
        prompts, _ = rollout.batch_prompts(batch, prompt_tokens, max(1, seq_len - max_new_tokens))
        new, logprobs = rollout.sample(writer, prompts, max_new_tokens, eos_ids, pad_id, vocab_size, device,
                                       generator)
        records = [rollout.rollout_record(p, n, lp, eos_ids) for p, n, lp in zip(prompts, new, logprobs)]
        with rollout.generating(grader):
            s, n = nll_sums(grader, to_device(rollout.collate_records(records, pad_id), device), vocab_size)
        total, count = total + s, count + n
    return (total / count if count else 0.0), count


def exposure_metrics(student, teacher, batches: list[dict], tokenizer, device, max_new_tokens: int = 32,
                     prompt_tokens: int = 32, seq_len: int = 128, seed: int = 0) -> dict:
    """The table above, on held-out batches (collated, with input_ids, attention_mask, targets, mask)."""
    vocab = head_weight(student).shape[0]
    eos = rollout.eos_ids_of(tokenizer, student, teacher)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    common = dict(eos_ids=eos, pad_id=pad, vocab_size=vocab, device=device, max_new_tokens=max_new_tokens,
                  prompt_tokens=prompt_tokens, seq_len=seq_len, seed=seed)
    t_nll, s_tokens = graded_samples(student, teacher, batches, **common)
    s_nll, t_tokens = graded_samples(teacher, student, batches, **common)
    return {"teacher_nll_of_student_samples": t_nll, "student_nll_of_teacher_samples": s_nll,
            "student_sample_tokens": s_tokens, "teacher_sample_tokens": t_tokens,
            "max_new_tokens": max_new_tokens}
