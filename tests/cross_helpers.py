"""Two byte-level BPE tokenizers trained on different text (different vocabularies, some shared strings)."""
from __future__ import annotations

import functools

from transformers import PreTrainedTokenizerFast

OTHER_CORPUS = [
    "Les élèves ont mangé une crêpe au café près de la forêt. Très bien!",
    "Emoji test: 👋 🎉 🚀 and 日本語 text, naïve façade, jalapeño.",
    "The quick brown fox jumps over the lazy dog while the king watches.",
    "Numbers 1234567890 and symbols #$%&*() appear in code: x = y + 1",
] * 6


@functools.lru_cache(maxsize=None)
def _trained(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(OTHER_CORPUS, trainer)
    return tok.to_str()


def other_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A student tokenizer unlike `helpers.tiny_tokenizer` (other text, other specials, no chat template)."""
    from tokenizers import Tokenizer

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_trained(vocab_size)), bos_token="<s>",
                                   eos_token="</s>", pad_token="</s>")


def save_other_tokenizer(path) -> str:
    other_tokenizer().save_pretrained(path)
    return str(path)
