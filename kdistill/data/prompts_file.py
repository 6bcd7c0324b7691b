"""Prompts for the teacher to answer: read from a file, then rendered to the token ids it continues.

A prompts file is one of
- text (.txt, .md): one prompt a line (blank lines skipped);
- JSONL, JSON or CSV records with a `prompt`, `instruction` or `question` field (plus an optional
  `context`/`input`), or chat `messages` (a trailing assistant turn is dropped). Instruction records
  (Dolly, Alpaca) are prompts too: their own responses are ignored, the teacher writes new ones.

`prompt_ids` renders a prompt with the tokenizer's chat template (prompt_format=chat, or auto when the
tokenizer has one) or as plain text to be continued (plain). The generated example's loss counts only
the tokens after these ids.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kdistill.base.errors import DataError
from kdistill.data.files import read_records, read_text
from kdistill.data.render import CONTEXT_FIELDS, PROMPT_FIELDS, _ids, _string, _template_ids, _turns

TEXT_SUFFIXES = (".txt", ".md")


@dataclass
class Prompt:
    """A prompt: chat turns ending with the user's, and `text`, the user's last turn (what plain mode
    continues). `origin` names the file and line."""

    messages: list[dict]
    origin: str = ""

    @property
    def text(self) -> str:
        return self.messages[-1]["content"]


def plain(text: str, origin: str = "") -> Prompt:
    return Prompt([{"role": "user", "content": text}], origin)


def _from_record(record: dict, where: str) -> Prompt:
    if "messages" in record:
        msgs = record["messages"]
        if isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "assistant":
            msgs = msgs[:-1]
        turns = _turns(list(msgs) + [{"role": "assistant", "content": ""}], where)[:-1]
        if not turns:
            raise DataError(f"{where}: 'messages' holds no user turn to answer")
        return Prompt(turns, where)
    fix = "store the prompt as a string"
    name = next((k for k in PROMPT_FIELDS if k in record), None)
    if name is None:
        raise DataError(f"{where}: no {' or '.join(map(repr, PROMPT_FIELDS))} field for the prompt; the record "
                        f"has fields {sorted(record)}")
    text = _string(record[name], name, where, fix)
    context = next((_string(record[k], k, where, fix) for k in CONTEXT_FIELDS if record.get(k)), "")
    if not text.strip():
        raise DataError(f"{where}: field {name!r} is empty; give the prompt's text")
    return plain(f"{text}\n\n{context}" if context else text, where)


def read_prompts(spec: str, key: str = "data.generate.prompts") -> list[Prompt]:
    """Every prompt of the file; DataError naming the file (and line) when it is missing, empty or malformed."""
    path = Path(spec).expanduser()
    if not path.is_file():
        raise DataError(f"{key}: file {spec} does not exist")
    if path.suffix.lower() in TEXT_SUFFIXES:
        lines = read_text(path).replace("\r\n", "\n").split("\n")
        prompts = [plain(line.strip(), f"{path}, line {i}") for i, line in enumerate(lines, 1) if line.strip()]
    else:
        records = read_records(str(path))
        prompts = [_from_record(r, getattr(r, "origin", f"{path}, record {i + 1}")) for i, r in enumerate(records)]
    if not prompts:
        raise DataError(f"{key}: {path} holds no prompts (the file is empty or blank); give one prompt a line")
    return prompts


def use_chat(tokenizer, prompt_format: str) -> bool:
    return prompt_format == "chat" or (prompt_format == "auto" and bool(getattr(tokenizer, "chat_template", None)))


def prompt_ids(tokenizer, prompt: Prompt, prompt_format: str = "auto") -> list[int]:
    """The ids the teacher continues: the chat template up to the assistant's turn, or the plain text."""
    if not use_chat(tokenizer, prompt_format):
        return _ids(tokenizer, prompt.text)
    if getattr(tokenizer, "chat_template", None):
        return _template_ids(tokenizer, prompt.messages, add_generation_prompt=True)
    text = "".join(f"### {m['role'].capitalize()}:\n{m['content']}\n\n" for m in prompt.messages)
    return _ids(tokenizer, text + "### Assistant:\n")  # as render.render_instruction does without a template

