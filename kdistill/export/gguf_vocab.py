"""A tokenizer as llama.cpp's GGUF metadata: `tokenizer.ggml.*` and `tokenizer.chat_template`.

Only byte-level BPE tokenizers (GPT-2 style, `tokenizer.ggml.model = "gpt2"`) are written: SmolLM2,
LLaMA 3, Qwen2 and kdistill's own students use them. llama.cpp does not read the `tokenizer.json`
pre-tokenizer; it picks a built-in regex from the name in `tokenizer.ggml.pre`, so we name the one the
HF pre-tokenizer is equivalent to and refuse any other, rather than ship a file that tokenizes
differently from the model's own tokenizer. SentencePiece-style (byte-fallback) vocabularies are
refused with a message saying so: their GGUF form needs token scores that a `tokenizer.json` lacks.

Token list, as llama.cpp's `convert_hf_to_gguf.py` writes it: one entry per embedding row (ids the
tokenizer does not use become `[PAD{id}]`, UNUSED), special added tokens are CONTROL, other added tokens
USER_DEFINED, everything else NORMAL.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from kdistill.base.errors import ModelError

NORMAL, UNUSED, CONTROL, USER_DEFINED = 1, 5, 3, 4  # gguf.TokenType values

# the GPT-2 split regex the HF `ByteLevel(use_regex=True)` pre-tokenizer applies
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLIT_PRE = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}


@dataclass
class GgufVocab:
    """Everything llama.cpp reads about the tokenizer; `add_to(writer)` writes it."""
    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad -> id
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | list | None = None

    def add_to(self, writer) -> None:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        writer.add_token_merges(self.merges)
        for kind, token_id in self.special_ids.items():
            getattr(writer, f"add_{kind}_token_id")(token_id)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)
        writer.add_add_space_prefix(False)
        if self.chat_template:
            writer.add_chat_template(self.chat_template)


def _component_types(node: dict | None) -> list[dict]:
    """Flatten a `Sequence` pre-tokenizer into its steps."""
    if not node:
        return []
    if node.get("type") == "Sequence":
        return [step for child in node.get("pretokenizers", []) for step in _component_types(child)]
    return [node]


def pre_tokenizer_name(tok_json: dict, where: str) -> str:
    """The llama.cpp `tokenizer.ggml.pre` name equivalent to this HF pre-tokenizer.

    Raises ModelError for a pre-tokenizer llama.cpp has no built-in equivalent for.
    """
    steps = _component_types(tok_json.get("pre_tokenizer"))
    kinds = [s.get("type") for s in steps]
    last = steps[-1] if steps else {}
    if last.get("type") == "ByteLevel" and last.get("add_prefix_space"):
        raise ModelError(f"{where}: the ByteLevel pre-tokenizer adds a prefix space, which llama.cpp's "
                         "byte-level BPE does not do; save the tokenizer with add_prefix_space=False")
    if kinds == ["ByteLevel"] and last.get("use_regex", True):
        return "gpt-2"
    if (kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits")
            and last.get("use_regex", True)):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not last.get("use_regex", True):
        pattern = steps[0].get("pattern", {}).get("Regex")
        if pattern in SPLIT_PRE and steps[0].get("behavior") == "Isolated":
            return SPLIT_PRE[pattern]
    raise ModelError(
        f"{where}: pre-tokenizer {json.dumps(tok_json.get('pre_tokenizer'))[:300]} has no llama.cpp "
        "equivalent that kdistill knows (supported: GPT-2 ByteLevel, SmolLM digits + ByteLevel, "
        "LLaMA-3 and Qwen2 split regexes); a GGUF would tokenize differently from the model's tokenizer. "
        "Export with --format int8/int4 (safetensors) instead, or train the student with a supported tokenizer")


def _check_byte_level_bpe(tok_json: dict, where: str) -> None:
    model = tok_json.get("model", {})
    decoder = tok_json.get("decoder") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder.get("type") != "ByteLevel":
        kind = "SentencePiece-style BPE (byte_fallback)" if model.get("byte_fallback") else model.get("type")
        raise ModelError(
            f"{where}: GGUF export supports byte-level BPE tokenizers (GPT-2 style, as SmolLM2 and LLaMA 3 "
            f"use); this one is {kind} with a {decoder.get('type')} decoder. Export with --format int8/int4 "
            "(safetensors) instead, or convert with llama.cpp's convert_hf_to_gguf.py")
    if tok_json.get("normalizer") is not None:
        raise ModelError(f"{where}: the tokenizer has a normalizer ({tok_json['normalizer'].get('type')}), "
                         "which llama.cpp's byte-level BPE does not apply; GGUF export cannot keep it")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise ModelError(f"{where}: BPE with a subword prefix/suffix is not byte-level BPE; cannot export it")


def merges_as_strings(merges: list) -> list[str]:
    """`[["Ġ", "t"], ...]` or `["Ġ t", ...]` -> `["Ġ t", ...]` (a space inside a part as U+0120+, as llama.cpp)."""
    if merges and isinstance(merges[0], str):
        return list(merges)
    return [" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in pair)
            for pair in merges]


def token_table(tokenizer, n_vocab: int, where: str) -> tuple[list[str], list[int]]:
    """Tokens and their gguf types, one per embedding row (`n_vocab` rows)."""
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= n_vocab:
        raise ModelError(f"{where}: the tokenizer has ids up to {max(vocab.values())} but the model has only "
                         f"{n_vocab} embedding rows; resize the embeddings or use the student's own tokenizer")
    by_id = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(CONTROL if added[i].special else USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL)
    return tokens, types


def _adds_special(tokenizer) -> tuple[bool, bool]:
    """Whether encoding plain text adds BOS first / EOS last (so llama.cpp does the same)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    add_bos = len(full) > len(plain) and full[0] == tokenizer.bos_token_id and plain[:1] != full[:1]
    add_eos = len(full) > len(plain) and full[-1] == tokenizer.eos_token_id and plain[-1:] != full[-1:]
    return add_bos, add_eos


def gguf_vocab(tokenizer, n_vocab: int, where: str) -> GgufVocab:
    """Read a fast HF tokenizer into `GgufVocab`; `where` names the folder in error messages."""
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"{where}: GGUF export needs a fast tokenizer (tokenizer.json); save the tokenizer "
                         "with transformers' PreTrainedTokenizerFast")
    tok_json = json.loads(tokenizer.backend_tokenizer.to_str())
    _check_byte_level_bpe(tok_json, where)
    pre = pre_tokenizer_name(tok_json, where)
    tokens, types = token_table(tokenizer, n_vocab, where)
    special_ids = {kind: getattr(tokenizer, f"{kind}_token_id") for kind in ("bos", "eos", "unk", "pad")}
    add_bos, add_eos = _adds_special(tokenizer)
    template = tokenizer.chat_template
    if isinstance(template, dict):  # several named templates: llama.cpp's list form
        template = [{"name": name, "template": text} for name, text in template.items()]
    return GgufVocab(pre=pre, tokens=tokens, token_types=types,
                     merges=merges_as_strings(tok_json["model"].get("merges", [])),
                     special_ids={k: v for k, v in special_ids.items() if v is not None},
                     add_bos=add_bos, add_eos=add_eos, chat_template=template)
