"""Quality filter of teacher-generated samples (the guide's `filter_quality`), one config key per rule.

    kept, dropped = quality_filter(samples, cfg.data.generate.filter, contamination_grams(files, 8))

A sample is a dict with "text" (the teacher's response), "prompt_text" (what it answered) and, when
`min_logprob` is set, "logprob" (mean log-likelihood per response token under the teacher, from
`score_logprobs`). Rules run in this order and a sample is counted under the first that drops it:

| reason          | drops a response that                                              | key (data.generate.filter.) |
|-----------------|--------------------------------------------------------------------|-----------------------------|
| too_short       | has fewer than min_chars characters                                | min_chars                   |
| too_long        | has more than max_chars characters                                 | max_chars                   |
| repeated_ngrams | repeats more than max_repeated_ngrams of its word n-grams          | max_repeated_ngrams, ngram  |
| low_logprob     | the teacher itself finds unlikely (mean log-prob below min_logprob)| min_logprob                 |
| contaminated    | shares a word n-gram with an eval or task record (prompt included) | contamination_*             |
| duplicate       | equals a kept response (case and space folded)                     | dedup                       |
| near_duplicate  | has Jaccard >= near_duplicate with a kept response (dedup.py)      | near_duplicate              |
"""
from __future__ import annotations

import re
from collections import Counter

import torch

from kdistill.base.errors import DataError
from kdistill.data.dedup import NearDuplicates, ngrams, normalise, words

SCAFFOLD = re.compile(r"(?im)^\s*(?:q|a|question|answer)\s*:")
FIXES = {
    "too_short": "lower data.generate.filter.min_chars",
    "too_long": "raise data.generate.filter.max_chars (or empty it)",
    "repeated_ngrams": "raise data.generate.filter.max_repeated_ngrams (1 = off)",
    "low_logprob": "lower data.generate.filter.min_logprob (or empty it)",
    "contaminated": "check the prompts against the task files, or set data.generate.filter.contamination_eval_tasks=false",
    "duplicate": "sample with a higher data.generate.temperature, or set data.generate.filter.dedup=false",
    "near_duplicate": "raise data.generate.filter.near_duplicate (or empty it)",
    "wrong_answer": "use a stronger teacher, more data.generate.samples_per_prompt, or data.generate.cot.check=false",
    "no_answer": "raise data.generate.max_new_tokens so the teacher reaches its final answer",
    "tests_failed": "use a stronger teacher, more data.generate.samples_per_prompt, or data.generate.cot.check=false",
    "program": "raise data.generate.cot.timeout_s or memory_mb if the programs are right but slow, or use a "
               "stronger teacher",
    "unusable": "raise data.generate.self_instruct.max_new_tokens, or use a teacher that follows instructions",
    "copies_seed": "raise data.generate.self_instruct.max_similarity, or give more varied seed tasks",
}


def repeated_fraction(text: str, n: int) -> float:
    """Fraction of the word n-grams that repeat an earlier one (0 for fewer than n words)."""
    grams = ngrams(words(text), n)
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def task_text(record: dict) -> str:
    """The text of a task record that must not leak into training: the question and its right answer,
    without "Q:" / "A:" scaffolding (a leak rarely copies the format)."""
    if "choices" in record:
        answer = record["answer"]
        right = record["choices"][answer] if isinstance(answer, int) else answer
        text = f"{record['context']} {right}"
    else:
        answers = record["answer"] if isinstance(record["answer"], list) else [record["answer"]]
        text = " ".join([record["prompt"], str(answers[0])])
    return SCAFFOLD.sub(" ", text)


def contamination_grams(paths: list[str], n: int) -> dict[int, set[tuple[str, ...]]]:
    """Word n-grams of every record of the task files, by length (a record shorter than n is one gram)."""
    from kdistill.data.task_files import read_task

    grams: dict[int, set] = {}
    for path in paths:
        for record in read_task(path)["records"]:
            tokens = words(task_text(record))
            found = ngrams(tokens, n) or ([tuple(tokens)] if tokens else [])
            for g in found:
                grams.setdefault(len(g), set()).add(g)
    return grams


def contaminated(text: str, grams: dict[int, set]) -> bool:
    tokens = words(text)
    return any(not found.isdisjoint(ngrams(tokens, n)) for n, found in grams.items())


@torch.no_grad()
def score_logprobs(model, samples: list[dict], device, batch_size: int = 4) -> None:
    """Set sample["logprob"]: the teacher's mean log-probability of its response tokens (nats)."""
    todo = [s for s in samples if "logprob" not in s]
    for i in range(0, len(todo), batch_size):
        chunk = todo[i:i + batch_size]
        width = max(len(s["ids"]) for s in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for row, s in enumerate(chunk):
            ids[row, :len(s["ids"])] = torch.tensor(s["ids"])
            attention[row, :len(s["ids"])] = 1
        logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits.float()
        logprobs = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None].to(device)).squeeze(-1).cpu()
        for row, s in enumerate(chunk):
            response = logprobs[row, s["n_prompt"] - 1:len(s["ids"]) - 1]  # position j-1 predicts ids[j]
            s["logprob"] = float(response.mean()) if response.numel() else float("-inf")


def drop_reason(sample: dict, cfg, grams: dict) -> str | None:
    """The first per-sample rule that drops this sample, or None."""
    text = sample["text"].strip()
    if len(text) < cfg.min_chars:
        return "too_short"
    if cfg.max_chars is not None and len(text) > cfg.max_chars:
        return "too_long"
    if repeated_fraction(text, cfg.ngram) > cfg.max_repeated_ngrams:
        return "repeated_ngrams"
    if cfg.min_logprob is not None and sample["logprob"] < cfg.min_logprob:
        return "low_logprob"
    if grams and contaminated(f"{sample.get('prompt_text', '')}\n{text}", grams):
        return "contaminated"
    return None


def quality_filter(samples: list[dict], cfg, grams: dict | None = None) -> tuple[list[dict], Counter]:
    """(kept samples in order, dropped count by reason)."""
    if not cfg.enabled:
        return list(samples), Counter()
    kept, dropped, seen = [], Counter(), set()
    near = NearDuplicates(cfg.near_duplicate) if cfg.near_duplicate is not None else None
    for s in samples:
        reason = drop_reason(s, cfg, grams or {})
        if reason is None and cfg.dedup:
            key = normalise(s["text"])
            reason = "duplicate" if key in seen else None
            seen.add(key)
        if reason is None and near is not None and near.add(s["text"]):
            reason = "near_duplicate"
        if reason is None:
            kept.append(s)
        else:
            dropped[reason] += 1
    return kept, dropped


def nothing_kept(total: int, dropped: Counter, report_path) -> DataError:
    """The error for a run whose every generated sample was dropped: it names the rule that removed the most."""
    reason, count = dropped.most_common(1)[0] if dropped else ("nothing generated", 0)
    counts = ", ".join(f"{k} {v}" for k, v in dropped.most_common())
    fix = FIXES.get(reason) or FIXES.get(reason.split("_")[0], "see the report")
    return DataError(f"every one of the {total} teacher-generated samples was filtered out; rule '{reason}' "
                     f"removed the most ({count}); all drops: {counts or 'none'}. To keep more: {fix}. "
                     f"Details: {report_path}")
