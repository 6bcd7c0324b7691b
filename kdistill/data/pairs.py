"""Records -> examples read by two tokenizers: the student's ids, the teacher's ids, and their groups.

    examples = render_pairs(records, student_tok, teacher_tok, seq_len, teacher_len, fmt, text_field, source)

Each side renders the prompt its own way (its chat template, or the plain "### User:" layout when it has
none; plain text gets the side's BOS, else EOS, as its first token), then the response text is tokenised
on its own by each tokenizer (`token_bytes.encode_bytes`: lossless or a DataError naming it) and the two
token sequences are grouped by byte offsets (`losses.cross.alignment.byte_groups`) relative to the response, so
chat templates, BOS and system prompts may differ freely. Each side ends with its EOS, paired with the
other's as one last group. Only the response counts (the mask marks its tokens and the EOS); a record is
one example (plain text is not packed), cut at a group boundary when either side would pass its length.

An example: {"ids", "mask"} as for one tokenizer (the student's), plus "teacher_ids", "groups" (student
start, end, teacher start, end token indices into ids / teacher_ids) and "bytes" (response bytes kept).
"""
from __future__ import annotations

from kdistill.base.errors import DataError
from kdistill.data.render import TEXT_FIELDS, _field, _ids, _messages, _template_ids, _where, detect_format
from kdistill.data.token_bytes import encode_bytes
from kdistill.losses.cross.alignment import byte_groups


def prompt_ids(tokenizer, messages: list[dict] | None) -> list[int]:
    """The side's own prompt: chat template, plain layout, or (messages None: plain text) one start token."""
    if messages is None:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if start is None:
            raise DataError(f"tokenizer {tokenizer.name_or_path!r} has neither a BOS nor an EOS token to start "
                            "plain text with; give it one or use instruction data")
        return [start]
    if getattr(tokenizer, "chat_template", None):
        return _template_ids(tokenizer, messages, add_generation_prompt=True)
    text = "".join(f"### {m['role'].capitalize()}:\n{m['content']}\n\n" for m in messages) + "### Assistant:\n"
    return _ids(tokenizer, text)


def _kept(groups, prompt_s: int, prompt_t: int, s_budget: int, t_budget: int) -> int:
    """How many leading groups fit both sides' budgets (ids counted with their prompts)."""
    n = 0
    for g in groups:
        if prompt_s + g[1] > s_budget or prompt_t + g[3] > t_budget:
            break
        n += 1
    return n


def render_pair(record: dict, student_tok, teacher_tok, seq_len: int, teacher_len: int, fmt: str,
                text_field: str, where: str) -> dict | None:
    """One record as a two-tokenizer example (module docstring); None when nothing of the response fits."""
    if fmt == "instruction":
        messages, response = _messages(record, where)
    else:
        messages, response = None, _field(record, text_field, TEXT_FIELDS, where)
    if not response:
        return None
    sp, tp = prompt_ids(student_tok, messages), prompt_ids(teacher_tok, messages)
    s_ids, s_len = encode_bytes(student_tok, response, f"{where} (student tokenizer)")
    t_ids, t_len = encode_bytes(teacher_tok, response, f"{where} (teacher tokenizer)")
    groups = byte_groups(s_len, t_len)
    n = _kept(groups, len(sp), len(tp), seq_len + 1, teacher_len + 1)
    if n == 0:
        return None
    s_end, t_end = groups[n - 1][1], groups[n - 1][3]
    whole = n == len(groups) and len(sp) + s_end < seq_len + 1 and len(tp) + t_end < teacher_len + 1
    ids, teacher_ids = sp + s_ids[:s_end], tp + t_ids[:t_end]
    spans = [(len(sp) + a, len(sp) + b, len(tp) + c, len(tp) + d) for a, b, c, d in groups[:n]]
    if whole and student_tok.eos_token_id is not None and teacher_tok.eos_token_id is not None:
        spans.append((len(ids), len(ids) + 1, len(teacher_ids), len(teacher_ids) + 1))
        ids, teacher_ids = ids + [student_tok.eos_token_id], teacher_ids + [teacher_tok.eos_token_id]
    return {"ids": ids, "mask": [j >= len(sp) for j in range(len(ids))], "teacher_ids": teacher_ids,
            "groups": spans, "bytes": sum(s_len[:s_end])}


def render_pairs(records: list[dict], student_tok, teacher_tok, seq_len: int, teacher_len: int,
                 fmt: str = "auto", text_field: str = "auto", source: str = "data") -> list[dict]:
    """Every record as a two-tokenizer example; DataError when none has a response that fits."""
    fmt = detect_format(records, fmt)
    examples = []
    for i, record in enumerate(records):
        example = render_pair(record, student_tok, teacher_tok, seq_len, teacher_len, fmt, text_field,
                              _where(record, f"{source}, record {i + 1}"))
        if example is not None:
            examples.append(example)
    if not examples:
        raise DataError(f"{source}: no record has a response that fits train.seq_len={seq_len} after its "
                        "prompt, in both tokenizers; raise train.seq_len")
    return examples
