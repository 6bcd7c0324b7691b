"""Final answers: found in a response, parsed, and compared with the known answer.

    extract_answer("... so she has 12 left.\\nAnswer: $12.50")   # "$12.50"
    parse_number("The answer is 1,234.")                        # 1234.0
    parse_choice("(B) because ...")                             # "B"
    matches("Answer: -3/4", "-0.75", "numeric")                 # True

The stated format is a last line `Answer: <answer>`; "the answer is X", "#### X" (GSM8K) and
`\\boxed{X}` are read too, the last one in the response winning. Numbers may carry thousands separators,
a currency sign, a percent sign, a fraction (-3/4), trailing units (12 apples) or be a small number word
(seven). Choices are a letter A-H, alone, in parentheses, or after "option".
"""
from __future__ import annotations

import math
import re
import string

ANSWER_PATTERNS = (
    re.compile(r"\\boxed\{([^{}]*)\}"),
    re.compile(r"####\s*([^\n]+)"),
    re.compile(r"\banswer\b\s*(?:is\b\s*:?|[:=])\s*([^\n]+)", re.IGNORECASE),
)
NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d+)?|\.\d+)(?:\s*/\s*\d+(?:\.\d+)?)?")
THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
WORDS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve "
                                    "thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty".split())}
CHOICE_PATTERNS = (
    re.compile(r"\(([A-Ha-h])\)"),
    re.compile(r"\b(?:option|choice|letter)\s*:?\s*([A-Ha-h])\b", re.IGNORECASE),
    re.compile(r"^\s*([A-H])(?:[).:\s]|$)"),
    re.compile(r"(?:^|\s)([A-H])[.)]?\s*$"),
)
LETTERS = "ABCDEFGH"


def extract_answer(text: str) -> str | None:
    """The final answer's text (the last stated one), or None when the response states none."""
    best = None
    for pattern in ANSWER_PATTERNS:
        for m in pattern.finditer(text):
            if best is None or m.start() > best.start():
                best = m
    if best is None:
        return None
    answer = best.group(1).strip().strip("*_`\"' ").rstrip(".").strip()
    return answer or None


def answer_start(text: str) -> int | None:
    """Character offset where the final answer's line (or statement) begins, for weighting its tokens."""
    best = None
    for pattern in ANSWER_PATTERNS:
        for m in pattern.finditer(text):
            best = m.start() if best is None or m.start() > best else best
    if best is None:
        return None
    line = text.rfind("\n", 0, best) + 1
    return line if text[line:best].strip(" *#>-") == "" else best


def parse_number(text: str | None) -> float | None:
    """The number an answer states: the first one after the last '=', with separators, signs and units
    dropped; a fraction becomes its value; a small number word is read. None when there is none."""
    if text is None:
        return None
    s = text.replace("\u2212", "-").replace("$", "").replace("€", "").replace("£", "")
    s = THOUSANDS.sub("", s.rsplit("=", 1)[-1])
    m = NUMBER.search(s)
    if m is None:
        word = re.search(r"[a-z]+", s.lower())
        return float(WORDS[word.group()]) if word and word.group() in WORDS else None
    value = m.group().replace(" ", "")
    if "/" in value:
        top, bottom = value.split("/")
        return float(top) / float(bottom) if float(bottom) != 0 else None
    return float(value)


def parse_choice(text: str | None) -> str | None:
    """The letter an answer picks: "(B)", "B)", "B.", "option b", "B"; None when there is none."""
    if text is None:
        return None
    for pattern in CHOICE_PATTERNS:
        m = pattern.search(text.strip())
        if m:
            return m.group(1).upper()
    return None


def normalise(text: str) -> str:
    """Lowercased, punctuation and surrounding space dropped, inner space collapsed."""
    return " ".join(text.lower().translate(str.maketrans("", "", string.punctuation)).split())


def gold_answer(record: dict, answer) -> str:
    """The known answer as text: a GSM8K "... #### 42" keeps 42; a choice index becomes its letter."""
    if isinstance(answer, bool):
        return str(answer).lower()
    if isinstance(answer, int) and record.get("choices"):
        return LETTERS[answer]
    text = str(answer)
    return text.rsplit("####", 1)[1].strip() if "####" in text else text.strip()


def answer_kind(gold: str, choices: list | None, requested: str = "auto") -> str:
    """exact, numeric or choice: auto picks choice for records with choices, numeric for a number."""
    if requested != "auto":
        return requested
    if choices:
        return "choice"
    cleaned = re.sub(r"[\s$€£%,]", "", gold.replace("\u2212", "-"))
    return "numeric" if re.fullmatch(r"[-+]?(\d+(\.\d+)?|\.\d+)(/\d+)?", cleaned) else "exact"


def matches(predicted: str | None, gold: str, kind: str, rel_tol: float = 1e-6, choices: list | None = None) -> bool:
    """Whether the predicted answer text agrees with the known one under `kind`."""
    if predicted is None:
        return False
    if kind == "numeric":
        p, g = parse_number(predicted), parse_number(gold)
        return p is not None and g is not None and math.isclose(p, g, rel_tol=rel_tol, abs_tol=1e-9)
    if kind == "choice":
        want = gold.strip().upper() if gold.strip().upper() in LETTERS and len(gold.strip()) == 1 else \
            next((LETTERS[i] for i, c in enumerate(choices or []) if normalise(str(c)) == normalise(gold)), None)
        got = parse_choice(predicted) or next((LETTERS[i] for i, c in enumerate(choices or [])
                                               if normalise(str(c)) == normalise(predicted)), None)
        return want is not None and got == want
    return normalise(predicted) == normalise(gold)
