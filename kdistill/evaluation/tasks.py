"""Benchmarks from local JSONL files, scored for teacher and student side by side.

    kdistill eval --student runs/demo/student --teacher default --tasks tests/fixtures/tasks/*.jsonl

One file is one task, named after the file (`arc_tiny.jsonl` -> `arc_tiny`); one JSON object a line.

Multiple choice (HellaSwag / ARC / MMLU style), scored by log-likelihood:

    {"context": "The capital of France is", "choices": ["Paris.", "bread."], "answer": 0}

`answer` is the index of the right choice (or its text); where several choices are right, `answers`
lists all their indices (a pick among them counts as right). Each choice is scored as the continuation
" " + choice after the context, as lm-eval's `multiple_choice` does (spaces that end the context move
to the continuation; the pair is tokenized whole and the context's tokens cut off the front).
`acc`: the choice with the highest summed log-likelihood is right; `acc_norm`: the same with the
log-likelihood divided by the choice's length in characters.

Generative, scored by exact match of a greedy completion:

    {"prompt": "Q: What is two plus two?\\nA:", "answer": "four"}      (answer: a string or a list)

Greedy decoding stops at the first newline, at the end-of-text token or after `max_new_tokens`.
`exact_match`: the completion equals an accepted answer once both are lowercased, stripped of
punctuation and of surrounding whitespace (lm-eval's exact_match with ignore_case, ignore_punctuation).

`--tasks` also takes a BIG-bench `task.json` (read_bigbench.py) and an lm-eval task YAML
(read_lm_eval.py); both become the records above, with the task's own delimiter between context and
choice and its own stop strings for generation.

Each score comes with its standard error and the task's chance and majority-class baseline; retention
(student score / teacher score) is n/a where the teacher does not beat that baseline by two standard
errors, and such tasks are left out of the mean task retention (the rule: chance.py).
`lm_eval_tasks.py` writes the matching lm-eval task YAML for each file.
"""
from __future__ import annotations

import json
import string
from pathlib import Path

import torch

from ..errors import DataError
from .chance import generative_baseline, mc_baseline, right_answers, stderr, task_retention

MC_KEYS, GEN_KEYS = ("context", "choices", "answer"), ("prompt", "answer")
PRIMARY = {"multiple_choice": "acc", "generative": "exact_match"}


def _check_record(rec, where: str) -> str:
    """The record's kind; DataError naming `where` (file and line) when it is neither format."""
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if "choices" in rec:
        missing = [k for k in MC_KEYS if k not in rec]
        if missing or not isinstance(rec["choices"], list) or len(rec["choices"]) < 2:
            raise DataError(f"{where}: a multiple-choice record needs context, choices (a list of 2 or more "
                            f"strings) and answer; missing or wrong: {missing or ['choices']}")
        if not isinstance(rec["context"], str) or not rec["context"].strip():
            raise DataError(f"{where}: context is empty; give the question or the start of the sentence")
        if not all(isinstance(c, str) and c for c in rec["choices"]):
            raise DataError(f"{where}: every choice must be a non-empty string")
        answer = rec["answer"]
        if isinstance(answer, str) and answer not in rec["choices"]:
            raise DataError(f"{where}: answer {answer!r} is not one of the choices; give its index or its text")
        if not isinstance(answer, str) and not (isinstance(answer, int) and 0 <= answer < len(rec["choices"])):
            raise DataError(f"{where}: answer {answer!r} is not an index into the {len(rec['choices'])} choices")
        several = rec.get("answers")
        if several is not None and not (isinstance(several, list) and several and all(
                isinstance(a, int) and 0 <= a < len(rec["choices"]) for a in several)):
            raise DataError(f"{where}: answers must list the indices of every right choice, e.g. [0, 2]")
        return "multiple_choice"
    if "prompt" in rec and "answer" in rec:
        if not isinstance(rec["prompt"], str) or not rec["prompt"]:
            raise DataError(f"{where}: prompt must be a non-empty string")
        return "generative"
    raise DataError(f"{where}: a task record is either multiple choice {{\"context\", \"choices\", \"answer\"}} "
                    f"or generative {{\"prompt\", \"answer\"}}; this one has keys {sorted(rec)}")


def read_task(path: str | Path, limit: int | None = None) -> dict:
    """One task file -> {"name", "kind", "path", "records", "format", "delimiter", "until", "max_new_tokens"}:
    JSONL (below), a BIG-bench task.json or an lm-eval YAML; all records must be of one kind."""
    path = Path(path)
    if path.is_dir() and (path / "task.json").is_file():
        path = path / "task.json"
    if not path.is_file():
        raise DataError(f"--tasks: {path} does not exist; give a JSONL file (format: kdistill/evaluation/tasks.py), "
                        "a BIG-bench task.json or an lm-eval task YAML")
    if path.suffix in (".json", ".yaml", ".yml"):
        from .read_bigbench import read_bigbench
        from .read_lm_eval import read_lm_eval_yaml

        task = read_bigbench(path) if path.suffix == ".json" else read_lm_eval_yaml(path)
        for i, rec in enumerate(task["records"]):
            _check_record(rec, f"{path}, {'example' if task['format'] == 'bigbench' else 'doc'} {i}")
        return _limit(task, limit)
    return _limit(read_jsonl_task(path), limit)


def _limit(task: dict, limit: int | None) -> dict:
    return {**task, "records": task["records"][:limit]} if limit else task


def read_jsonl_task(path: Path) -> dict:
    """A kdistill JSONL task file (the module docstring's format)."""
    records, kind = [], None
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {line_no}: not valid JSON ({e.msg}); one JSON object a line") from None
        this = _check_record(rec, f"{path}, line {line_no}")
        if kind is not None and this != kind:
            raise DataError(f"{path}, line {line_no}: a {this} record in a {kind} task; one kind a file")
        kind = this
        if this == "multiple_choice" and isinstance(rec["answer"], str):
            rec = {**rec, "answer": rec["choices"].index(rec["answer"])}
        records.append(rec)
    if not records:
        raise DataError(f"{path}: no records; write one JSON object a line")
    return {"name": path.stem, "kind": kind, "path": str(path), "records": records, "format": "jsonl",
            "delimiter": " ", "until": ["\n"], "max_new_tokens": None}


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
