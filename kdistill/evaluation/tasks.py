"""Benchmarks from local JSONL files, scored for teacher and student side by side.

    kdistill eval --student runs/demo/student --teacher default --tasks tests/fixtures/tasks/*.jsonl

The task files (JSONL, BIG-bench task.json, lm-eval YAML) are read by kdistill/data/task_files.py,
which documents their format.

Each score comes with its standard error and the task's chance and majority-class baseline; retention
(student score / teacher score) is n/a where the teacher does not beat that baseline by two standard
errors, and such tasks are left out of the mean task retention (the rule: chance.py).
`lm_eval_tasks.py` writes the matching lm-eval task YAML for each file.
"""
from __future__ import annotations

import string

import torch

from kdistill.data.task_files import read_task
from kdistill.evaluation.chance import generative_baseline, mc_baseline, right_answers, stderr, task_retention

PRIMARY = {"multiple_choice": "acc", "generative": "exact_match"}


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of context and continuation, lm-eval's way (trailing spaces go to the continuation)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = _encode(tokenizer, context + continuation)
    n_context = len(_encode(tokenizer, context))
    return whole[:n_context], whole[n_context:]


@torch.no_grad()
def continuation_logprobs(model, pairs: list[tuple[list[int], list[int]]], device, pad_id: int = 0) -> list[float]:
    """Summed log-probability of each continuation after its context, in one right-padded batch.

    Shapes: pairs of (context ids, continuation ids) -> one float per pair
    """
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit:  # keep the end of a too long context, as lm-eval does
        pairs = [(c[max(0, len(c) + len(k) - limit):], k) for c, k in pairs]
    seqs = [c + k for c, k in pairs]
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], attn[i, :len(s)] = torch.tensor(s), 1
    logits = model(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False).logits
    out = []
    for i, (ctx, cont) in enumerate(pairs):
        positions = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1, device=logits.device)  # predict `cont`
        logprobs = logits[i, positions].float().log_softmax(-1)  # (len(cont), V)
        out.append(logprobs.gather(-1, torch.tensor(cont, device=logits.device)[:, None]).sum().item())
    return out


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])  # first of equal maxima, like numpy


def score_multiple_choice(model, tokenizer, records: list[dict], device, delimiter: str = " ") -> dict:
    """acc, acc_norm (each with its standard error) and each record's log-likelihoods and picked choice;
    a pick is right when it is one of the record's right answers."""
    acc = acc_norm = 0
    details = []
    for rec in records:
        pairs = [encode_pair(tokenizer, rec["context"], delimiter + choice) for choice in rec["choices"]]
        lls = continuation_logprobs(model, pairs, device, tokenizer.pad_token_id or 0)
        pick = _argmax(lls)
        pick_norm = _argmax([ll / max(1, len(c)) for ll, c in zip(lls, rec["choices"])])
        acc += pick in right_answers(rec)
        acc_norm += pick_norm in right_answers(rec)
        details.append({"loglikelihoods": lls, "pick": pick, "pick_norm": pick_norm})
    n = len(records)
    return {"acc": acc / n, "acc_stderr": stderr(acc / n, n), "acc_norm": acc_norm / n,
            "acc_norm_stderr": stderr(acc_norm / n, n), "n": n, "details": details}


def _cut(text: str, until) -> int | None:
    """Where the first stop string starts in `text`, None when there is none."""
    found = [i for i in (text.find(u) for u in until if u) if i >= 0]
    return min(found) if found else None


@torch.no_grad()
def greedy_completion(model, tokenizer, prompt: str, max_new_tokens: int, device, until=("\n",)) -> str:
    """Greedy decoding, one token at a time with the KV cache, cut before the first stop string."""
    ids = torch.tensor([_encode(tokenizer, prompt)], device=device)
    new, past = [], None
    for _ in range(max_new_tokens):
        out = model(input_ids=ids, past_key_values=past, use_cache=True)
        past = getattr(out, "past_key_values", None)
        token = int(out.logits[0, -1].argmax())
        if token == tokenizer.eos_token_id:
            break
        new.append(token)
        if _cut(tokenizer.decode(new, skip_special_tokens=True), until) is not None:
            break
        ids = torch.tensor([[token]], device=device) if past is not None else torch.cat(
            [ids, torch.tensor([[token]], device=device)], dim=1)
    text = tokenizer.decode(new, skip_special_tokens=True)
    end = _cut(text, until)
    return text if end is None else text[:end]


def normalize(text: str) -> str:
    return text.lower().translate(str.maketrans("", "", string.punctuation)).strip()


def score_generative(model, tokenizer, records: list[dict], device, max_new_tokens: int = 32,
                     until=("\n",)) -> dict:
    """exact_match (with its standard error) and the completions."""
    hits, completions = 0, []
    for rec in records:
        text = greedy_completion(model, tokenizer, rec["prompt"], max_new_tokens, device, until)
        answers = rec["answer"] if isinstance(rec["answer"], list) else [rec["answer"]]
        hits += any(normalize(text) == normalize(str(a)) for a in answers)
        completions.append(text)
    n = len(records)
    return {"exact_match": hits / n, "exact_match_stderr": stderr(hits / n, n), "n": n, "completions": completions}


def retention(student_score: float, teacher_score: float) -> float | None:
    """student / teacher; None when the teacher scores 0 (no ratio to speak of)."""
    return student_score / teacher_score if teacher_score > 0 else None


def baseline(task: dict) -> dict:
    """{"chance", "majority", "baseline"} of a task (chance.py)."""
    if task["kind"] == "multiple_choice":
        return mc_baseline(task["records"])
    return generative_baseline(task["records"], normalize)


def score_task(model, tokenizer, task: dict, device, max_new_tokens: int) -> dict:
    if task["kind"] == "multiple_choice":
        return score_multiple_choice(model, tokenizer, task["records"], device, task.get("delimiter", " "))
    return score_generative(model, tokenizer, task["records"], device, task.get("max_new_tokens") or max_new_tokens,
                            task.get("until", ["\n"]))


def run_tasks(models: dict, tokenizer, paths: list, device, limit: int | None = None,
              max_new_tokens: int = 32) -> dict:
    """Every task for every model ({"teacher": m, "student": m}) -> {task name: scores, baseline, retention}.
    `retention` is None with a `retention_note` when the teacher does not beat the baseline (chance.py)."""
    results = {}
    for path in paths:
        task = read_task(path, limit)
        metric, n = PRIMARY[task["kind"]], len(task["records"])
        row = {"kind": task["kind"], "metric": metric, "n": n, "path": task["path"], "format": task["format"],
               **baseline(task)}
        for name, model in models.items():
            row[name] = score_task(model, tokenizer, task, device, max_new_tokens)
        if "teacher" in row and "student" in row:
            row["retention"], note = task_retention(row["student"][metric], row["teacher"][metric],
                                                    row["baseline"], n)
            if note:
                row["retention_note"] = note
        results[task["name"]] = row
    return results


def mean_retention(benchmarks: dict) -> float | None:
    """Mean retention over the tasks where it is defined (the teacher beats the baseline); None when it
    is defined nowhere."""
    values = [b["retention"] for b in benchmarks.values() if b.get("retention") is not None]
    return sum(values) / len(values) if values else None


def retention_summary(benchmarks: dict) -> dict:
    """eval.json's mean task retention: over the tasks where the teacher beats the baseline; which tasks
    count and why the others do not."""
    return {"task_retention": mean_retention(benchmarks),
            "task_retention_tasks": [k for k, b in benchmarks.items() if b.get("retention") is not None],
            "task_retention_excluded": {k: b.get("retention_note", "n/a") for k, b in benchmarks.items()
                                        if b.get("retention") is None and "teacher" in b}}
