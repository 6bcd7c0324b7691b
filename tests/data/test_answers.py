"""Final answers read from tricky formats and compared by kind."""
import pytest

from kdistill.data.answers import (
    answer_kind,
    answer_start,
    extract_answer,
    gold_answer,
    matches,
    parse_choice,
    parse_number,
)


@pytest.mark.parametrize("text, number", [
    ("The answer is 1,234.", 1234.0),
    ("Answer: $12.50", 12.5),
    ("answer: -3/4", -0.75),
    ("Answer: 12 apples", 12.0),
    ("Answer: 3.5 km.", 3.5),
    ("Final answer: **42**", 42.0),
    ("so 6 * 12 = 72\n#### 72", 72.0),
    ("We get \\boxed{3/4}.", 0.75),
    ("The answer is 3 + 4 = 7.", 7.0),
    ("Answer: 1,000,000 people", 1e6),
    ("Answer: \u22125", -5.0),                     # a Unicode minus
    ("Answer: seven", 7.0),
    ("Answer: 50%", 50.0),
    ("first 10, then 20.\nAnswer: 30", 30.0),     # the stated answer, not the last number seen
    ("Answer: 4\nWait, no. Answer: 5", 5.0),       # the last stated answer wins
])
def test_numbers_are_read_from_the_stated_answer(text, number):
    assert parse_number(extract_answer(text)) == pytest.approx(number)


@pytest.mark.parametrize("text", ["I do not know.", "the answer isn't clear", "answers vary by region"])
def test_a_response_without_a_stated_answer_has_none(text):
    assert extract_answer(text) is None


@pytest.mark.parametrize("text, letter", [("(B)", "B"), ("B) Paris", "B"), ("b", None), ("option c", "C"),
                                          ("C.", "C"), ("The answer is (d) because", "D"), ("A", "A")])
def test_choice_letters(text, letter):
    assert parse_choice(text) == letter


def test_matching_by_kind():
    assert matches("$12.50", "12.5", "numeric") and matches("12.5000001", "12.5", "numeric", rel_tol=1e-6)
    assert not matches("12.6", "12.5", "numeric") and not matches(None, "1", "numeric")
    assert matches("(B)", "B", "choice") and matches("Paris", "B", "choice", choices=["Rome", "Paris"])
    assert matches("(B)", "Paris", "choice", choices=["Rome", "Paris"]) and not matches("(A)", "B", "choice")
    assert matches("  paris! ", "Paris", "exact") and not matches("Paris, France", "Paris", "exact")


def test_known_answers_and_their_kind():
    assert gold_answer({}, "Natalia sold 48 + 24 = 72 clips.\n#### 72") == "72"      # GSM8K
    assert gold_answer({"choices": ["x", "y"]}, 1) == "B"
    assert answer_kind("$1,234", None) == "numeric" and answer_kind("-3/4", None) == "numeric"
    assert answer_kind("Paris", None) == "exact" and answer_kind("1", ["a", "b"]) == "choice"


def test_answer_start_is_the_answer_line():
    text = "Step 1: 3 + 4 = 7.\nAnswer: 7"
    assert text[answer_start(text):] == "Answer: 7"
