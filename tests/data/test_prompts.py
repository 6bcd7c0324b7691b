"""The built-in prompt set: every prompt once before any repeats, 2 plain : 1 chat, a mix of kinds early."""
from kdistill.data.prompts import CHAT, PLAIN
from kdistill.data.teacher_written import prompt_texts


class Plain:
    chat_template = None


def test_every_prompt_comes_once_before_any_repeats():
    n = len(PLAIN) + len(CHAT)
    first = prompt_texts(Plain(), n)
    assert len(set(first)) == n
    assert set(first) == set(PLAIN) | {f"{c}\n" for c in CHAT}
    assert prompt_texts(Plain(), 2 * n)[n:] == first  # then the same order again


def test_two_plain_to_one_chat_and_the_same_order_every_time():
    texts = prompt_texts(Plain(), 60)
    chat = sum(t.endswith("\n") and t[:-1] in CHAT for t in texts)
    assert chat == 20
    assert texts == prompt_texts(Plain(), 60)


def test_the_demo_s_first_eighty_hold_stories_facts_and_code():
    texts = prompt_texts(Plain(), 80)
    assert any(t.startswith(("Once upon", "The king", "When the dragon", "Dear diary", "It was the last")) for t in texts)
    assert any(t.startswith(("The capital", "Tokyo", "The river Nile", "Canada", "Germany")) for t in texts)
    assert any("def " in t or "function" in t or "SELECT" in t for t in texts)
