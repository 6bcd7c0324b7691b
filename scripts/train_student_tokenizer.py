"""Train the small byte-level BPE tokenizer that `configs/cross_tokenizer.yaml` gives its student.

    python scripts/train_student_tokenizer.py            # writes data/student_tokenizer/ (2,048 tokens)

Trained on the repository's own data files (Dolly sample, word problems, seed tasks), so the student's
vocabulary differs from any teacher's while sharing its common strings (" the", " of", ...). Byte-level, so
it encodes any text losslessly. Deterministic for one `tokenizers` version.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def corpus() -> list[str]:
    texts = []
    for name in ("dolly_sample.jsonl", "arith_word_problems.jsonl"):
        for line in (ROOT / "data" / name).read_text().splitlines():
            if line.strip():
                texts.extend(str(v) for v in json.loads(line).values() if isinstance(v, str))
    texts.extend((ROOT / "data" / "seed_tasks.txt").read_text().splitlines())
    return texts


def train(vocab_size: int, out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   bos_token="<|endoftext|>")
    fast.save_pretrained(out)
    print(f"wrote {out}: {len(fast)} tokens")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "student_tokenizer")
    args = parser.parse_args()
    train(args.vocab_size, args.out)
