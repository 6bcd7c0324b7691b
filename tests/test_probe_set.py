"""scripts/probe_set.py: the probe prompts are text no built-in run trains on, rendered as teacher_written does."""
import importlib.util
from pathlib import Path

from kdistill.data.prompts import CHAT, PLAIN

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("probe_set", ROOT / "scripts" / "probe_set.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_probe_prompt_is_a_builtin_prompt():
    records = _script().read_probe()
    prompts = [r["prompt"] for r in records]
    assert len(prompts) == len(set(prompts)) == 54
    assert not set(prompts) & (set(PLAIN) | set(CHAT))
    assert all(isinstance(r["chat"], bool) for r in records)
    assert sum(r["chat"] for r in records) == 18


class _Tok:
    """Ids are characters; the chat template wraps the user's turn."""

    chat_template = "<u>{content}</u><a>"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize and add_generation_prompt
        return [ord(c) for c in f"<u>{messages[0]['content']}</u><a>"]

    def __call__(self, text, add_special_tokens):
        assert not add_special_tokens
        return {"input_ids": [ord(c) for c in text]}


def test_chat_prompts_go_through_the_template_and_plain_prompts_stay_text():
    ids = _script().prompt_ids(_Tok(), [{"prompt": "Hi", "chat": True}, {"prompt": "Once", "chat": False}])
    assert ["".join(map(chr, i)) for i in ids] == ["<u>Hi</u><a>", "Once"]
