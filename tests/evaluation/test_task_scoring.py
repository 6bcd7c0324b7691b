"""The benchmark scorers on tiny tasks whose answers and log-likelihoods are worked out by hand.

The 'model' is a bigram table over a character vocabulary, so every log-likelihood is a product of
table entries written below.
"""
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import tiny_tokenizer

from kdistill.base.errors import DataError
from kdistill.evaluation.tasks import (
    encode_pair,
    mean_retention,
    normalize,
    read_task,
    retention,
    retention_summary,
    run_tasks,
    score_generative,
    score_multiple_choice,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "tasks"
VOCAB = [" ", "a", "b", "c", "\n"]
EOS = len(VOCAB)


class CharTokenizer:
    eos_token_id, pad_token_id = EOS, None

    def encode(self, text, add_special_tokens=False):
        return [VOCAB.index(ch) for ch in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(VOCAB[i] for i in ids if i != EOS)


class Bigram:
    """P(next | current) from a table; ignores attention masks and the cache (a bigram needs neither)."""

    config = SimpleNamespace(max_position_embeddings=64)

    def __init__(self, rows: dict):
        self.logits = torch.full((EOS + 1, EOS + 1), -30.0)
        for cur, probs in rows.items():
            for nxt, p in probs.items():
                self.logits[VOCAB.index(cur), EOS if nxt == "eos" else VOCAB.index(nxt)] = math.log(p)

    def __call__(self, input_ids, attention_mask=None, use_cache=False, past_key_values=None):
        return SimpleNamespace(logits=self.logits[input_ids], past_key_values=None)


ROWS = {" ": {"a": .5, "b": .25, "c": .125, " ": .0625, "eos": .0625},
        "a": {"a": .5, "b": .125, "c": .125, " ": .125, "eos": .125},
        "b": {"a": .25, "b": .25, "c": .25, " ": .125, "eos": .125},
        "c": {"a": .25, "b": .25, "c": .25, " ": .125, "eos": .125}}
MC = [{"context": "c", "choices": ["b", "aaa"], "answer": 1},
      {"context": "a", "choices": ["c", "b"], "answer": 1}]


def test_multiple_choice_log_likelihoods_acc_and_acc_norm():
    result = score_multiple_choice(Bigram(ROWS), CharTokenizer(), MC, "cpu")
    # record 1: " b" = P(' '|c) P(b|' ') = 1/8 * 1/4; " aaa" = 1/8 * 1/2 * 1/2 * 1/2
    # record 2: " c" = P(' '|a) P(c|' ') = 1/8 * 1/8; " b" = 1/8 * 1/4
    expected = [[math.log(1 / 32), math.log(1 / 64)], [math.log(1 / 64), math.log(1 / 32)]]
    for got, want in zip(result["details"], expected):
        assert got["loglikelihoods"] == pytest.approx(want, abs=1e-5)
    # record 1: acc picks "b" (wrong); per character -3.47 vs -4.16/3 = -1.39 picks "aaa" (right)
    assert [d["pick"] for d in result["details"]] == [0, 1]
    assert [d["pick_norm"] for d in result["details"]] == [1, 1]
    assert result["acc"] == 0.5 and result["acc_norm"] == 1.0 and result["n"] == 2


def test_trailing_space_of_the_context_moves_to_the_continuation():
    assert encode_pair(CharTokenizer(), "c ", " b") == ([3], [0, 0, 2])
    tok = tiny_tokenizer()
    ctx, cont = encode_pair(tok, "The capital of France is ", " Paris.")
    assert ctx + cont == tok.encode("The capital of France is  Paris.", add_special_tokens=False)
    assert tok.decode(ctx) == "The capital of France is"


def test_generative_exact_match_with_greedy_decoding():
    greedy = {"c": {" ": .9, "a": .1}, " ": {"a": .9, "b": .1}, "a": {"b": .9, "a": .1},
              "b": {"\n": .9, "a": .1}}
    records = [{"prompt": "c", "answer": "AB."},         # c -> " ab" then newline: matches ignoring case/punct
               {"prompt": "b", "answer": "ab"},           # b -> newline at once: empty completion, no match
               {"prompt": "a", "answer": ["x", "b"]}]     # a -> "b": the second accepted answer
    result = score_generative(Bigram(greedy), CharTokenizer(), records, "cpu", max_new_tokens=8)
    assert result["completions"] == [" ab", "", "b"]
    assert result["exact_match"] == pytest.approx(2 / 3)
    short = score_generative(Bigram(greedy), CharTokenizer(), records[:1], "cpu", max_new_tokens=2)
    assert short["completions"] == [" a"] and short["exact_match"] == 0.0
    stops = score_generative(Bigram({"c": {"eos": .9}}), CharTokenizer(), records[:1], "cpu")
    assert stops["completions"] == [""]
    assert normalize("  Paris. ") == "paris"


def test_run_tasks_gives_retention_student_over_teacher(tmp_path):
    path = tmp_path / "hand_mc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in MC))
    uniform = Bigram({})  # every logit -30: ties; choices scored by length only
    result = run_tasks({"teacher": Bigram(ROWS), "student": uniform}, CharTokenizer(), [path], "cpu")
    task = result["hand_mc"]
    assert task["kind"] == "multiple_choice" and task["metric"] == "acc" and task["n"] == 2
    # uniform over 6 ids: ll = -len(continuation) ln 6; record 1 picks "b" (wrong), record 2 ties -> "c" (wrong)
    assert task["teacher"]["acc"] == 0.5 and task["student"]["acc"] == 0.0
    # both answers are position 1: "always the second choice" scores 100%, so the teacher's 50% says nothing
    assert task["chance"] == 0.5 and task["majority"] == 1.0 and task["baseline"] == 1.0
    assert task["retention"] is None and task["retention_note"].startswith("n/a: teacher 50.0% is not above")
    assert retention(0.3, 0.6) == 0.5 and retention(0.3, 0.0) is None
    assert mean_retention({"a": {"retention": 0.5}, "b": {"retention": None}, "c": {"retention": 1.0}}) == 0.75


# Under ROWS a choice's log-likelihood depends on the choice alone: P(a|' ') .5 > P(b|' ') .25 > P(c|' ') .125
ABOVE = [{"context": "a", "choices": ["a", "b", "c"], "answer": 0}, {"context": "b", "choices": ["c", "b", "cc"], "answer": 1},
         {"context": "c", "choices": ["cc", "c", "ccc"], "answer": 1}, {"context": "a", "choices": ["bb", "ca", "a"], "answer": 2}]


def test_retention_counts_only_where_the_teacher_beats_the_baseline(tmp_path):
    above, at = tmp_path / "above.jsonl", tmp_path / "at.jsonl"
    above.write_text("".join(json.dumps(r) + "\n" for r in ABOVE * 2))
    at.write_text("".join(json.dumps(r) + "\n" for r in MC))
    result = run_tasks({"teacher": Bigram(ROWS), "student": Bigram({})}, CharTokenizer(), [above, at], "cpu")
    task = result["above"]
    # right texts a, b, c, a and positions 0, 1, 1, 2: majority 50%, chance 1/3; threshold .5 + 2 sqrt(.25 / 8) = 85.4%
    assert task["chance"] == pytest.approx(1 / 3) and task["majority"] == 0.5 and task["baseline"] == 0.5
    assert task["teacher"]["acc"] == 1.0 and task["teacher"]["acc_stderr"] == 0.0
    # the uniform student picks the shortest choice (the first of equal ones): right, wrong, right, right
    assert task["student"]["acc"] == 0.75
    assert task["student"]["acc_stderr"] == pytest.approx(math.sqrt(0.75 * 0.25 / 7))  # lm-eval's mean_stderr
    assert task["retention"] == 0.75 and "retention_note" not in task
    summary = retention_summary(result)
    assert summary["task_retention"] == 0.75 and summary["task_retention_tasks"] == ["above"]
    assert list(summary["task_retention_excluded"]) == ["at"]
    assert summary["task_retention_excluded"]["at"].startswith("n/a: teacher 50.0%")


def test_shipped_fixtures_read_as_their_kinds():
    mc, gen = read_task(FIXTURES / "tiny_mc.jsonl"), read_task(FIXTURES / "tiny_gen.jsonl")
    assert mc["kind"] == "multiple_choice" and len(mc["records"]) == 4
    assert mc["records"][1]["answer"] == 0  # given as the choice's text
    assert gen["kind"] == "generative"
    assert read_task(FIXTURES / "tiny_mc.jsonl", limit=2)["records"] == mc["records"][:2]


@pytest.mark.parametrize("lines, message", [
    (['{"context": "a", "choices": ["b", "c"], "answer": 0}', '{"context": "a",'], "line 2: not valid JSON"),
    (['{"context": "a", "choices": ["b"], "answer": 0}'], "line 1: a multiple-choice record needs"),
    (['{"context": "a", "choices": ["b", "c"], "answer": "d"}'], "answer 'd' is not one of the choices"),
    (['{"context": "a", "choices": ["b", "c"], "answer": 2}'], "answer 2 is not an index"),
    (['{"prompt": "a", "answer": "b"}', '{"context": "a", "choices": ["b", "c"], "answer": 0}'],
     "line 2: a multiple_choice record in a generative task"),
    (['{"context": " ", "choices": ["b", "c"], "answer": 0}'], "line 1: context is empty"),
    (['{"question": "a"}'], "either multiple choice"),
    ([], "no records"),
    (['{"context": "a", "choices": ["b", "c"], "answer": 0, "answers": [0, 2]}'], "answers must list the indices"),
])
def test_bad_task_files_name_the_file_and_line(tmp_path, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message) as err:
        read_task(path)
    assert "bad.jsonl" in str(err.value)
