"""Tiny models and tokenizers built in code, so tests never download anything.

`tiny_tokenizer()` is a byte-level BPE trained on a few sentences, with a ChatML chat template and
`<|im_start|>`/`<|im_end|>` specials like SmolLM2's. `tiny_llama(vocab_size)` is a 2-layer LLaMA;
`tiny_teacher(arch, vocab_size)` is a tiny model of another family (`TEACHER_ARCHS`), width 32.
"""
from __future__ import annotations

import functools

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CORPUS = [
    "Once upon a time there was a little fox who lived in the forest.",
    "The king said that the castle would open its gates at dawn.",
    "In the beginning the world was dark and quiet and cold.",
    "To bake bread, mix flour, water, salt and yeast, then wait.",
    "def add(a, b):\n    return a + b\n",
    "What is the capital of France? The capital of France is Paris.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "She opened the door, looked outside and smiled at the rain.",
] * 4

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@functools.lru_cache(maxsize=None)
def _trained_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok.to_str()


def tiny_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """A fresh tokenizer object (callers may mutate it) of at most `vocab_size` tokens."""
    from tokenizers import Tokenizer

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_tokenizer(vocab_size)),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_llama_config(vocab_size: int, **overrides) -> LlamaConfig:
    cfg = dict(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    cfg.update(overrides)
    return LlamaConfig(**cfg)


def tiny_llama(vocab_size: int, seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(vocab_size, **overrides)).eval()


def _tiny_config(arch: str, vocab_size: int, overrides: dict):
    from transformers import (
        Gemma3TextConfig,
        GPT2Config,
        MistralConfig,
        PhiConfig,
        Qwen2Config,
    )

    ids = dict(bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True)
    llama_like = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, **ids)
    cls, fields = {
        "qwen2": (Qwen2Config, llama_like),
        "mistral": (MistralConfig, {**llama_like, "sliding_window": None}),
        "gpt2": (GPT2Config, dict(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                  **{**ids, "pad_token_id": None})),
        "gemma3_text": (Gemma3TextConfig, {**llama_like, "head_dim": 16, "sliding_window": 16}),
        "phi": (PhiConfig, {**llama_like, "num_key_value_heads": None}),
    }[arch]
    return cls(**{**fields, **overrides})


TEACHER_ARCHS = ("llama", "qwen2", "mistral", "gpt2", "gemma3_text", "phi")


def tiny_teacher(arch: str, vocab_size: int, seed: int = 0, **overrides):
    """A tiny causal LM of family `arch` (one of TEACHER_ARCHS), in eval mode. Biases are random (not the
    usual zeros) so that tests see whether they are carried over."""
    from transformers import AutoModelForCausalLM

    if arch == "llama":
        return tiny_llama(vocab_size, seed, **overrides)
    config = _tiny_config(arch, vocab_size, overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return model.eval()


def save_tiny_teacher(path, seed: int = 0, arch: str = "llama", **overrides) -> str:
    """Write a tiny teacher (LLaMA unless `arch` names another of TEACHER_ARCHS) plus tokenizer to `path`
    (an HF folder) and return it as str."""
    tok = tiny_tokenizer()
    model = tiny_teacher(arch, len(tok), seed, **overrides)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def signal_a_run(teacher_dir, out, number: int, args: list[str]) -> tuple[int, str, int]:
    """Start `kdistill distill` (400 steps, no checkpoint or evaluation due) in a process, send it signal
    `number` once it has written 3 metrics rows; (exit status, stderr, the step of its last row)."""
    import json
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).parents[1]
    cmd = [sys.executable, "-m", "kdistill", "distill", f"teacher.model={teacher_dir}", f"output_dir={out}", *args,
           "train.max_steps=400", "train.checkpoint_every=1000", "train.eval_every=1000"]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = Path(out) / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # wait for a few training steps
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(number)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err, int(json.loads(metrics.read_text().splitlines()[-1])["step"])


def feature_batch(b: int = 4, t: int = 9, seed: int = 0) -> dict:
    """A collated batch of random ids (vocabulary 300) with padding in row 1 and about a fifth of the
    tokens not counted, for feature-term tests. Shapes: -> input_ids, attention_mask, targets, mask (b, t)"""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 300, (b, t), generator=g)
    am = torch.ones(b, t, dtype=torch.long)
    am[1, -3:] = 0
    mask = am.bool() & (torch.rand(b, t, generator=g) > 0.2)
    return {"input_ids": ids, "attention_mask": am, "targets": torch.roll(ids, -1, 1), "mask": mask}
