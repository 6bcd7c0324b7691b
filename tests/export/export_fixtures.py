"""Tiny LLaMA students saved as HF folders, shared by the export tests (fixtures in conftest.py).

Hidden 64 and intermediate 128 are multiples of the 32-long Q8_0/Q4_0 blocks; initializer_range 0.1
gives logits with some spread (std ~0.8) so errors and KLs are not trivially small.
"""
from pathlib import Path

from tests.helpers import tiny_llama, tiny_tokenizer

STUDENT = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
               initializer_range=0.1)
SENTENCES = [
    "Once upon a time there was a little fox who lived in the forest.",
    "The 3 kings paid 1250 coins, then left at 7:30!",
    "def add(a, b):\n    return a + b\n",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n",
    "  Leading spaces,\ttabs and   runs of spaces; émigré café naïve.",
]


def save_student(path, vocab_size: int = 0, **overrides) -> Path:
    """Write a tiny student (vocab = the tokenizer's 320 unless `vocab_size`) and its tokenizer."""
    tok = tiny_tokenizer()
    tiny_llama(vocab_size or len(tok), **{**STUDENT, **overrides}).save_pretrained(path)
    tok.save_pretrained(path)
    return Path(path)
