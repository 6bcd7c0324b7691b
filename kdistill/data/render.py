"""Records -> fixed-length training examples.

An example is `{"ids": [int] * (n+1), "mask": [bool] * (n+1)}` with n <= seq_len: the model reads
ids[:-1] and predicts ids[1:]; mask[j] says whether predicting ids[j] counts. Plain text is packed into
blocks (documents joined by EOS, stride seq_len so no target is lost); instruction records (Dolly:
instruction/context/response, Alpaca: instruction/input/output, or chat `messages`) are rendered with
the tokenizer's chat template and count only the response tokens. Only strings become text: a list,
object or number in a text or instruction field is refused, naming the field and the record's origin.

Nothing is dropped without a word. A record without text (its text or response field missing, null or
blank) and an instruction record whose prompt fills train.seq_len are dropped, counted, printed and kept
in the returned list's `report` (`Rendered`: records, examples, dropped by reason with the first records'
origins), which the run writes as `data_report.json`; when none is left the DataError says why.
`data.text_field` naming no field of any record is an error naming the fields the records have.
"""
from __future__ import annotations

from kdistill.base.errors import DataError

TEXT_FIELDS = ("text", "content", "document", "body", "story")
PROMPT_FIELDS = ("instruction", "prompt", "question")
RESPONSE_FIELDS = ("response", "output", "completion", "answer")
CONTEXT_FIELDS = ("context", "input")
NO_TEXT, LONG_PROMPT = "no_text", "prompt_over_seq_len"  # why a record was dropped (report keys)
SHOWN = 5  # origins of dropped records kept per reason


class Rendered(list):
    """The examples, with `report`: {"path", "format", "records", "examples", "dropped": {reason: n},
    "dropped_records": {reason: ["notes.jsonl, line 7: 'text' is null", ...]}} (the first SHOWN per reason)."""

    report: dict | None = None


class Dropped:
    """Records left out, by reason, with the first SHOWN ones' origins and why."""

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.origins: dict[str, list[str]] = {}

    def add(self, reason: str, why: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if len(self.origins.setdefault(reason, [])) < SHOWN:
            self.origins[reason].append(why)


def dropped_words(report: dict) -> str:
    """A report's dropped records in words: "1 without text (...) [t.jsonl, line 3: 'text' is null]; ..."."""
    what = {NO_TEXT: "without text (a missing, null or blank text or response field)",
            LONG_PROMPT: f"whose prompt fills train.seq_len={report['seq_len']} (raise it to keep them)"}
    counts, origins = report["dropped"], report["dropped_records"]
    return "; ".join(f"{counts[k]} {what[k]} [{'; '.join(origins[k])}{'; ...' if counts[k] > SHOWN else ''}]"
                     for k in what if k in counts)


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


FIX_TEXT = "store the text as a string, or set data.text_field to a field that holds one"


def _field(record: dict, wanted: str, choices: tuple[str, ...], where: str, fix: str = FIX_TEXT) -> str:
    names = (wanted,) if wanted != "auto" else choices
    for name in names:
        if name in record:
            return _string(record[name], name, where, fix)
    raise DataError(f"{where}: no {' or '.join(repr(n) for n in names)} field; the record has fields "
                    f"{sorted(record)}. Set data.text_field to one of them")


def _text(record: dict, names: tuple[str, ...], where: str, fix: str) -> tuple[str | None, str | None]:
    """(the text of the first of `names` the record holds, None), or (None, why it has none: "t.jsonl,
    line 3: 'text' is null", missing or blank); a list, object or number is refused."""
    name = next((n for n in names if n in record), None)
    if name is None:
        return None, f"{where}: no {' or '.join(map(repr, names))} field"
    if record[name] is None:
        return None, f"{where}: {name!r} is null"
    text = _string(record[name], name, where, fix)
    return (text, None) if text.strip() else (None, f"{where}: {name!r} is blank")


def _names(text_field: str) -> tuple[str, ...]:
    return (text_field,) if text_field != "auto" else TEXT_FIELDS


def _no_response(record: dict, where: str) -> str | None:
    """Why an instruction record has no response to learn (missing, null or blank), else None."""
    if "messages" in record:  # anything but a blank last assistant turn is for _turns to refuse or take
        msgs = record["messages"]
        last = msgs[-1] if isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict) else {}
        blank = last.get("role") == "assistant" and isinstance(last.get("content"), str) and not last["content"].strip()
        return f"{where}: the assistant's turn is blank" if blank else None
    return _text(record, RESPONSE_FIELDS, where, "store the prompt, context and response as strings")[1]


def check_text_field(records: list[dict], fmt: str, text_field: str = "auto", source: str = "data") -> None:
    """DataError when `data.text_field` names no field of any record (or, with auto, no record of plain
    text has any of TEXT_FIELDS), naming the fields the records do have."""
    if fmt == "instruction" and text_field == "auto":
        return
    names = _names(text_field)
    if any(n in r for r in records for n in names):
        return
    fields = sorted({str(k) for r in records for k in r})
    shown = f"{fields[:20]}{' and more' if len(fields) > 20 else ''}"
    if text_field != "auto":
        raise DataError(f"{source}: data.text_field={text_field!r} names no field of any record; the records have "
                        f"fields {shown}. Set data.text_field to one of them")
    raise DataError(f"{source}: no record has a {' or '.join(map(repr, names))} field; the records have fields "
                    f"{shown}. Set data.text_field to one of them")


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _rendered(examples: list[dict], records: list[dict], dropped: Dropped, fmt: str, source: str,
              seq_len: int) -> Rendered:
    """The examples with their report; DataError naming what was dropped when no example is left."""
    out = Rendered(examples)
    out.report = {"path": source, "format": fmt, "records": len(records), "examples": len(examples),
                  "seq_len": seq_len, "dropped": dict(dropped.counts), "dropped_records": dict(dropped.origins)}
    if not examples:
        why = dropped_words(out.report) or "none has text left after tokenising"
        raise DataError(f"{source}: no example to train on; of {len(records)} records, {why}")
    return out


def pack_text(records: list[dict], tokenizer, seq_len: int, text_field: str = "auto",
              source: str = "data") -> Rendered:
    """Join documents with EOS and cut blocks of seq_len+1 tokens at stride seq_len; records without
    text are dropped and counted (`Rendered.report`)."""
    check_text_field(records, "text", text_field, source)
    stream: list[int] = []
    eos = tokenizer.eos_token_id
    dropped = Dropped()
    for i, record in enumerate(records):
        where = _where(record, f"{source}, record {i + 1}")
        text, why = _text(record, _names(text_field), where, FIX_TEXT)
        if why:
            dropped.add(NO_TEXT, why)
            continue
        stream.extend(_ids(tokenizer, text) + ([eos] if eos is not None else []))
    examples = []
    for start in range(0, len(stream) - 1, seq_len):
        block = stream[start:start + seq_len + 1]
        if len(block) >= 2:
            examples.append({"ids": block, "mask": [True] * len(block)})
    return _rendered(examples, records, dropped, "text", source, seq_len)


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


def render_instructions(records: list[dict], tokenizer, seq_len: int, source: str = "data") -> Rendered:
    """One example per record, the response counted; records without a response, or whose prompt fills
    seq_len, are dropped and counted (`Rendered.report`)."""
    examples, dropped = [], Dropped()
    for i, record in enumerate(records):
        where = _where(record, f"{source}, record {i + 1}")
        why = _no_response(record, where)
        if why:
            dropped.add(NO_TEXT, why)
            continue
        ids, n_prompt = render_instruction(record, tokenizer, where)
        ids = ids[:seq_len + 1]
        mask = [j >= n_prompt for j in range(len(ids))]
        if not any(mask[1:]):
            dropped.add(LONG_PROMPT, f"{where}: {n_prompt} prompt tokens")
            continue
        examples.append({"ids": ids, "mask": mask})
    return _rendered(examples, records, dropped, "instruction", source, seq_len)


def check_fields(records: list[dict], fmt: str = "auto", text_field: str = "auto", source: str = "data") -> None:
    """The field checks of `render` without a tokenizer (text, or prompt/context/response/messages, are
    strings; data.text_field names a field some record has), so a bad record can be refused before any
    model loads. Records without text pass: `render` drops and counts them."""
    fmt = detect_format(records, fmt) if records else fmt
    check_text_field(records, fmt, text_field, source)
    for i, record in enumerate(records):
        where = _where(record, f"{source}, record {i + 1}")
        if fmt == "instruction":
            if not _no_response(record, where):
                _messages(record, where)
        else:
            _text(record, _names(text_field), where, FIX_TEXT)


def render(records: list[dict], tokenizer, seq_len: int, fmt: str = "auto", text_field: str = "auto",
           source: str = "data") -> Rendered:
    """Examples from `records` (module docstring); what was dropped is printed and in `.report`."""
    fmt = detect_format(records, fmt)
    check_text_field(records, fmt, text_field, source)
    if fmt == "instruction":
        examples = render_instructions(records, tokenizer, seq_len, source)
    else:
        examples = pack_text(records, tokenizer, seq_len, text_field, source)
    report = examples.report
    if report["dropped"]:
        print(f"data: {sum(report['dropped'].values())} of {report['records']} records of {source} dropped: "
              f"{dropped_words(report)}", flush=True)
    return examples
