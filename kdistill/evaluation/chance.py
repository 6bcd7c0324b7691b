"""Does a task score say anything? Standard errors, chance and majority-class levels, and when retention counts.

Every task record scores 0 or 1, so a task score s over n records is a mean of 0/1 values:

- `stderr(s, n)` = sqrt(s (1 - s) / (n - 1)), the standard error of that mean (sample standard deviation
  over sqrt(n), lm-eval's `mean_stderr`); None for n < 2.
- `baseline(task)`: what a model gets without reading the question. Multiple choice: the larger of
  chance (a uniform pick: the mean over records of right choices / choices) and the majority class (the
  best constant answer: always the same position, or always the same choice text, a record without that
  text counting as wrong). Generative: the share of records that the most often accepted answer (after
  `normalize`) would get right; 0 when every record wants another answer.
- `beats_baseline(score, base, n)`: score > base + 2 sqrt(base (1 - base) / n), two standard errors of a
  scorer at the baseline on the same n records (a one-sided test at about 2.5%).

Retention (student score / teacher score) is defined only where the teacher beats the baseline; where it
does not, retention is None, `retention_note` says by how much it fell short, and the task is left out of
the mean task retention: a teacher at chance makes the ratio noise (2 of 4 right by luck against 1 of 4
reads as 50% "retention").
"""
from __future__ import annotations

import math
from collections import Counter

MARGIN = 2.0  # standard errors above the baseline that a teacher must score for retention to count


def stderr(score: float, n: int) -> float | None:
    """Standard error of a mean of n 0/1 values whose mean is `score`; None below 2 records."""
    return math.sqrt(max(0.0, score * (1 - score)) / (n - 1)) if n >= 2 else None


def right_answers(record: dict) -> list[int]:
    """Indices of the right choices of a multiple-choice record (`answers` when several are right)."""
    return list(record.get("answers") or [record["answer"]])


def mc_baseline(records: list[dict]) -> dict:
    """Chance and majority-class accuracy of a multiple-choice task (see the module docstring)."""
    n = len(records)
    chance = sum(len(right_answers(r)) / len(r["choices"]) for r in records) / n
    by_position, by_text = Counter(), Counter()
    for r in records:
        rights = right_answers(r)
        by_position.update(set(rights))
        by_text.update({r["choices"][i] for i in rights})
    majority = max(max(by_position.values()), max(by_text.values())) / n
    return {"chance": chance, "majority": majority, "baseline": max(chance, majority)}


def generative_baseline(records: list[dict], normalize) -> dict:
    """The best constant answer's exact-match score of a generative task."""
    accepted = Counter()
    for r in records:
        answers = r["answer"] if isinstance(r["answer"], list) else [r["answer"]]
        accepted.update({normalize(str(a)) for a in answers})
    majority = max(accepted.values()) / len(records) if accepted else 0.0
    return {"chance": 0.0, "majority": majority, "baseline": majority}


def threshold(base: float, n: int) -> float:
    """The score a model must exceed to beat `base` on n records."""
    return base + MARGIN * math.sqrt(max(0.0, base * (1 - base)) / max(1, n))


def beats_baseline(score: float, base: float, n: int) -> bool:
    return score > threshold(base, n)


def task_retention(student_score: float, teacher_score: float, base: float, n: int) -> tuple[float | None, str]:
    """(student / teacher or None, why None): None when the teacher does not beat the baseline."""
    limit = threshold(base, n)
    if teacher_score <= limit:
        return None, (f"n/a: teacher {teacher_score:.1%} is not above the baseline {base:.1%} + "
                      f"{MARGIN:g} standard errors = {limit:.1%} (n={n})")
    return student_score / teacher_score, ""
