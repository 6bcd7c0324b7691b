"""Prompts files: text lines, JSONL prompts, instruction and chat records; empty or malformed files fail
with the file and line."""
import json

import pytest
from helpers import tiny_tokenizer

from kdistill.base.errors import DataError
from kdistill.data.prompts_file import plain, prompt_ids, read_prompts


def test_text_lines_jsonl_prompts_and_chat_records(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("Name a fruit.\n\n  Name a tree.  \n")
    assert [p.text for p in read_prompts(str(txt))] == ["Name a fruit.", "Name a tree."]
    jl = tmp_path / "p.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "A?"}, {"instruction": "B?", "input": "ctx", "output": "old"}, {"question": "C?"},
        {"messages": [{"role": "user", "content": "D?"}, {"role": "assistant", "content": "old"}]}]) + "\n")
    prompts = read_prompts(str(jl))
    assert [p.text for p in prompts] == ["A?", "B?\n\nctx", "C?", "D?"]
    assert prompts[3].messages == [{"role": "user", "content": "D?"}] and prompts[1].origin.endswith("line 2")


@pytest.mark.parametrize("name, content, match", [
    ("empty.txt", "", r"empty.txt holds no prompts"),
    ("blank.txt", "\n  \n", r"blank.txt holds no prompts"),
    ("bad.jsonl", '{"prompt": "ok"}\n{"prompt": \n', r"bad.jsonl, line 2: not valid JSON"),
    ("nofield.jsonl", '{"prompt": "ok"}\n{"text": "x", "id": 3}\n', r"nofield.jsonl, line 2: no 'instruction'.*\['id', 'text'\]"),
    ("list.jsonl", '{"prompt": ["a"]}\n', r"list.jsonl, line 1: field 'prompt' holds a list"),
    ("emptyfield.jsonl", '{"prompt": "  "}\n', r"line 1: field 'prompt' is empty"),
])
def test_bad_prompt_files_name_the_file_and_line(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=match):
        read_prompts(str(path))


def test_missing_file():
    with pytest.raises(DataError, match=r"data.generate.prompts: file nope.txt does not exist"):
        read_prompts("nope.txt")


def test_rendering_chat_plain_and_without_a_template():
    tok = tiny_tokenizer()
    p = plain("Name a fruit.")
    assert tok.decode(prompt_ids(tok, p)) == "<|im_start|>user\nName a fruit.<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(prompt_ids(tok, p, "plain")) == "Name a fruit."
    tok.chat_template = None
    assert tok.decode(prompt_ids(tok, p)) == "Name a fruit."                    # auto: no template -> plain
    assert tok.decode(prompt_ids(tok, p, "chat")).endswith("### Assistant:\n")
