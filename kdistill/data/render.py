"""Records -> fixed-length training examples.

An example is `{"ids": [int] * (n+1), "mask": [bool] * (n+1)}` with n <= seq_len: the model reads
ids[:-1] and predicts ids[1:]; mask[j] says whether predicting ids[j] counts. Plain text is packed into
blocks (documents joined by EOS, stride seq_len so no target is lost); instruction records (Dolly:
instruction/context/response, Alpaca: instruction/input/output, or chat `messages`) are rendered with
the tokenizer's chat template and count only the response tokens. Only strings become text: a list,
object or number in a text or instruction field is refused, naming the field and the record's origin.
"""
from __future__ import annotations

from kdistill.base.errors import DataError

TEXT_FIELDS = ("text", "content", "document", "body", "story")
PROMPT_FIELDS = ("instruction", "prompt", "question")
RESPONSE_FIELDS = ("response", "output", "completion", "answer")
CONTEXT_FIELDS = ("context", "input")


def detect_format(records: list[dict], requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    first = records[0]
    if "messages" in first or (any(k in first for k in PROMPT_FIELDS) and any(k in first for k in RESPONSE_FIELDS)):
        return "instruction"
    return "text"


def _where(record: dict, fallback: str) -> str:
    """Where a record came from: "notes.jsonl, line 7" for a file's records (files.Record), else `fallback`."""
    return getattr(record, "origin", None) or fallback


def _kind(value) -> str:
    kinds = {bool: "true/false", int: "number", float: "number", list: "list", dict: "JSON object",
             bytes: "bytes", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


def _shown(value) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _not_a_string(value, name: str, where: str, fix: str) -> DataError:
    return DataError(f"{where}: field {name!r} holds a {_kind(value)} ({_shown(value)}), not a string; "
                     f"only strings become text: {fix}")


def _string(value, name: str, where: str, fix: str) -> str:
    """A text field's value: a string (None reads as ""); a list, object or number is refused."""
    if value is None or isinstance(value, str):
        return value or ""
    raise _not_a_string(value, name, where, fix)


def _field(record: dict, wanted: str, choices: tuple[str, ...], where: str,
           fix: str = "store the text as a string, or set data.text_field to a field that holds one") -> str:
    names = (wanted,) if wanted != "auto" else choices
    for name in names:
        if name in record:
            return _string(record[name], name, where, fix)
    raise DataError(f"{where}: no {' or '.join(repr(n) for n in names)} field; the record has fields "
                    f"{sorted(record)}. Set data.text_field to one of them")


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def pack_text(records: list[dict], tokenizer, seq_len: int, text_field: str = "auto",
              source: str = "data") -> list[dict]:
    """Join documents with EOS and cut blocks of seq_len+1 tokens at stride seq_len."""
    stream: list[int] = []
    eos = tokenizer.eos_token_id
    for i, record in enumerate(records):
        text = _field(record, text_field, TEXT_FIELDS, _where(record, f"{source}, record {i + 1}"))
        if text.strip():
            stream.extend(_ids(tokenizer, text) + ([eos] if eos is not None else []))
    if len(stream) < 2:
        raise DataError(f"{source}: no text to train on after tokenising")
    examples = []
    for start in range(0, len(stream) - 1, seq_len):
        block = stream[start:start + seq_len + 1]
        if len(block) >= 2:
            examples.append({"ids": block, "mask": [True] * len(block)})
    return examples


def _turns(msgs, where: str) -> list[dict]:
    """Chat `messages`: a list of {"role": str, "content": str}, ending with the assistant's turn."""
    shape = 'a list of {"role": "user" or "assistant", "content": "text"} objects'
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{where}: field 'messages' must be {shape}, got {_kind(msgs)} {_shown(msgs)}")
    for j, turn in enumerate(msgs):
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise DataError(f"{where}: messages[{j}] must be {{\"role\": ..., \"content\": ...}}, got {_shown(turn)}")
        for key in ("role", "content"):
            if not isinstance(turn[key], str):
                raise _not_a_string(turn[key], f"messages[{j}].{key}", where,
                                    "make every turn's role and content a string")
    if msgs[-1]["role"] != "assistant":
        raise DataError(f"{where}: 'messages' must end with an assistant turn")
    return msgs


def _messages(record: dict, where: str) -> tuple[list[dict], str]:
    if "messages" in record:
        msgs = _turns(record["messages"], where)
        return msgs[:-1], msgs[-1]["content"]
    fix = "store the prompt, context and response as strings"
    prompt = _field(record, "auto", PROMPT_FIELDS, where, fix)
    context = next((_string(record[k], k, where, fix) for k in CONTEXT_FIELDS if record.get(k)), "")
    response = _field(record, "auto", RESPONSE_FIELDS, where, fix)
    user = f"{prompt}\n\n{context}" if context else prompt
    return [{"role": "user", "content": user}], response


def _template_ids(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    if hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def render_instruction(record: dict, tokenizer, where: str) -> tuple[list[int], int]:
    """Returns (ids, number of prompt tokens); the response tokens are ids[n_prompt:]."""
    messages, response = _messages(record, where)
    if getattr(tokenizer, "chat_template", None):
        prompt = _template_ids(tokenizer, messages, add_generation_prompt=True)
        full = _template_ids(tokenizer, messages + [{"role": "assistant", "content": response}], False)
        if full[:len(prompt)] == prompt:
            return full, len(prompt)
        return prompt + _ids(tokenizer, response) + [tokenizer.eos_token_id], len(prompt)
    text = "".join(f"### {m['role'].capitalize()}:\n{m['content']}\n\n" for m in messages) + "### Assistant:\n"
    prompt = _ids(tokenizer, text)
    return prompt + _ids(tokenizer, response) + [tokenizer.eos_token_id], len(prompt)


def render_instructions(records: list[dict], tokenizer, seq_len: int, source: str = "data") -> list[dict]:
    examples, skipped = [], 0
    for i, record in enumerate(records):
        ids, n_prompt = render_instruction(record, tokenizer, _where(record, f"{source}, record {i + 1}"))
        ids = ids[:seq_len + 1]
        mask = [j >= n_prompt for j in range(len(ids))]
        if not any(mask[1:]):
            skipped += 1
            continue
        examples.append({"ids": ids, "mask": mask})
    if not examples:
        raise DataError(f"{source}: every record's prompt is longer than train.seq_len={seq_len}; "
                        "raise train.seq_len")
    return examples


def check_fields(records: list[dict], fmt: str = "auto", text_field: str = "auto", source: str = "data") -> None:
    """The field checks of `render` without a tokenizer (text, or prompt/context/response/messages, are
    strings), so a bad record can be refused before any model loads."""
    fmt = detect_format(records, fmt) if records else fmt
    for i, record in enumerate(records):
        where = _where(record, f"{source}, record {i + 1}")
        if fmt == "instruction":
            _messages(record, where)
        else:
            _field(record, text_field, TEXT_FIELDS, where)


def render(records: list[dict], tokenizer, seq_len: int, fmt: str = "auto", text_field: str = "auto",
           source: str = "data") -> list[dict]:
    fmt = detect_format(records, fmt)
    if fmt == "instruction":
        return render_instructions(records, tokenizer, seq_len, source)
    return pack_text(records, tokenizer, seq_len, text_field, source)
