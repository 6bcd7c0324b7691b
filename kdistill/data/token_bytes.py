"""The bytes of each token, so two tokenizers can be compared on the text they both read.

    strings = vocab_bytes(tokenizer, rows)          # bytes per id (None: a special token or padding row)
    ids, lengths = encode_bytes(tokenizer, text, "data.jsonl, line 3")   # lengths[i] = bytes of ids[i]

Byte-level BPE (GPT-2, SmolLM2, Qwen, LLaMA-3) writes each byte as one printable character (the GPT-2
table below); SentencePiece (LLaMA-2, Mistral, Gemma) writes a space as "▁" and unknown bytes as
"<0xNN>". Other tokenizers (WordPiece, ...) have no byte reading and are refused. `encode_bytes` checks
that the token bytes are the text's own bytes (lossless): text a tokenizer cannot encode that way (an
unknown character, a normalizer that changes the text, a special token's name inside the text) is a
DataError naming the tokenizer, where the text came from, and the first place it differs.
"""
from __future__ import annotations

import functools
import json
import re

from kdistill.base.errors import DataError, ModelError

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@functools.lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """GPT-2's printable character -> byte table (the inverse of `bytes_to_unicode`)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def reading(tokenizer) -> str:
    """How token strings map to bytes: "byte_level" or "sentencepiece"; ModelError for anything else."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = json.loads(backend.to_str()).get("decoder") if backend is not None else None
    kinds = json.dumps(decoder or {})
    if '"ByteLevel"' in kinds:
        return "byte_level"
    if '"Metaspace"' in kinds or '"ByteFallback"' in kinds or "\\u2581" in kinds:
        return "sentencepiece"
    raise ModelError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r}: its decoder "
                     f"({(decoder or {}).get('type', 'none')}) has no byte reading; cross-tokenizer distillation "
                     "needs a byte-level BPE or SentencePiece tokenizer (a fast `tokenizer.json`)")


def token_to_bytes(token: str, how: str) -> bytes | None:
    """One vocabulary string as bytes; None when it is not text of that tokenizer."""
    if how == "byte_level":
        table = byte_decoder()
        return bytes(table[c] for c in token) if all(c in table for c in token) else None
    found = _BYTE_TOKEN.match(token)
    return bytes([int(found.group(1), 16)]) if found else token.replace("▁", " ").encode("utf-8")


def vocab_bytes(tokenizer, rows: int | None = None) -> list[bytes | None]:
    """Bytes of ids 0..rows-1 (rows: the model's output rows; ids past the tokenizer are None).

    Special tokens are None (they are no text); other added tokens are their content's UTF-8.
    Shapes: -> (rows,)
    """
    how = reading(tokenizer)
    rows = rows if rows is not None else len(tokenizer)
    out: list[bytes | None] = [None] * rows
    for token, i in tokenizer.get_vocab().items():
        if i < rows:
            out[i] = token_to_bytes(token, how)
    special = set(getattr(tokenizer, "all_special_ids", []))
    for token, i in tokenizer.get_added_vocab().items():
        if i < rows:
            out[i] = None if i in special else token.encode("utf-8")
    return out


_TABLES: dict[int, tuple] = {}  # id(tokenizer) -> (tokenizer, its byte table): built once per tokenizer


def _cached_bytes(tokenizer) -> list:
    if id(tokenizer) not in _TABLES or _TABLES[id(tokenizer)][0] is not tokenizer:
        _TABLES[id(tokenizer)] = (tokenizer, vocab_bytes(tokenizer))
    return _TABLES[id(tokenizer)][1]


def encode_bytes(tokenizer, text: str, where: str) -> tuple[list[int], list[int]]:
    """Token ids of `text` (no special tokens added) and each token's byte length; DataError if lossy.

    A SentencePiece tokenizer's added leading "▁" (its dummy prefix) is taken off the first token.
    Shapes: -> ids (n,), lengths (n,) with sum(lengths) == len(text.encode())
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    table = _cached_bytes(tokenizer)
    pieces = [table[i] if i < len(table) else None for i in ids]
    target = text.encode("utf-8")
    if pieces and pieces[0] is not None and not target.startswith(b" ") and pieces[0].startswith(b" ") \
            and reading(tokenizer) == "sentencepiece":
        pieces[0] = pieces[0][1:]
    if any(p is None for p in pieces) or b"".join(pieces) != target:
        raise DataError(f"{where}: tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} cannot encode this "
                        f"text losslessly ({_first_difference(pieces, target)}); cross-tokenizer alignment needs "
                        "both tokenizers to reproduce the text byte for byte. Remove or replace that text "
                        "(special-token names, characters outside the tokenizer) or pick another tokenizer")
    return ids, [len(p) for p in pieces]


def _first_difference(pieces: list, target: bytes) -> str:
    done = b""
    for p in pieces:
        if p is None:
            return f"a special or unknown token after {done[-30:].decode('utf-8', 'replace')!r}"
        if not target.startswith(done + p):
            at = len(done)
            return (f"at byte {at}: the text has {target[at:at + 20].decode('utf-8', 'replace')!r}, the tokens "
                    f"give {p[:20].decode('utf-8', 'replace')!r}")
        done += p
    return f"the tokens stop at byte {len(done)} of {len(target)}"
