"""`kdistill generate`: complete prompts with a model folder, an int8/int4 export or a .gguf file.

    model, tokenizer = load_for_generation("runs/demo/student-int4")   # or a folder, or FILE.gguf
    print(complete(model, tokenizer, "What is the capital of France?", chat=True))

What `--model` may be, decided here once:
- a folder whose config.json has a `quantization_config` (`kdistill export --format int8|int4`):
  `kdistill.export.load_quantized`, then its layers rebuilt as float once (`dequantize_model`: the same
  values, no per-token rebuild); no compressed-tensors needed;
- a `.gguf` file (ours or llama.cpp's, llama architecture): transformers' GGUF reader, model and
  tokenizer from the file, dequantised to fp32;
- any other folder: `from_pretrained`, after `model_files.check_model_folder` (custom code, pickled or
  damaged weights are refused with a ModelError, never run or unpickled).
`chat=True` wraps the prompt as one user message in the tokenizer's chat template (instruct models);
a tokenizer without a template is a ModelError saying so.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import torch

from kdistill.base.errors import ModelError
from kdistill.models.files import check_model_folder


def _is_quantised(folder: Path) -> bool:
    if (folder / "quant_config.json").is_file():  # kdistill's earlier int8/int4 format
        return True
    config = folder / "config.json"
    return config.is_file() and "quantization_config" in json.loads(config.read_text())


def check_chat(tok, chat: bool) -> None:
    """With `chat`, a ModelError before any model loads when the tokenizer has no chat template."""
    if chat and not getattr(tok, "chat_template", None):
        raise ModelError(f"--chat: the tokenizer of {getattr(tok, 'name_or_path', 'this model')!r} has no chat "
                         "template (a base model, or chat_template missing from tokenizer_config.json / "
                         "chat_template.jinja); drop --chat, or use an instruct model's tokenizer")


def _load_gguf(path: Path, chat: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not path.is_file():
        raise ModelError(f"--model {path}: no such file")
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # transformers' own tqdm bars while it converts
            tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            check_chat(tok, chat)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                         trust_remote_code=False)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelError(f"--model {path}: transformers cannot read this GGUF file ({e}); it reads llama-style "
                         "GGUF files such as `kdistill export --format gguf` writes") from e
    return model.eval(), tok


def _load_quantised(folder: Path, chat: bool):
    from transformers import AutoTokenizer

    from kdistill.export import load_quantized
    from kdistill.export.quantize import dequantize_model

    try:
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ModelError(f"--model {folder}: no tokenizer in this quantised folder ({e}); export it again "
                         "(`kdistill export` copies the student's tokenizer)") from e
    check_chat(tok, chat)
    return dequantize_model(load_quantized(folder)), tok


def load_for_generation(path: str, chat: bool = False):
    """(model in eval mode, tokenizer) for a folder, a quantised export or a .gguf file; with `chat`,
    a tokenizer without a chat template is refused before the model loads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if path.suffix.lower() == ".gguf":
        return _load_gguf(path, chat)
    if not path.is_dir():
        raise ModelError(f"--model {path}: no such folder or .gguf file (give a student folder such as "
                         "runs/demo/student, an export of it, or a .gguf file)")
    if _is_quantised(path):
        return _load_quantised(path, chat)
    use_safetensors = check_model_folder(path, "--model")
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        check_chat(tok, chat)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=False,
                                                     use_safetensors=use_safetensors).eval()
    except (OSError, ValueError) as e:
        raise ModelError(f"--model {path}: cannot load a model and tokenizer from it ({e})") from e
    return model, tok


def prompt_ids(tok, prompt: str, chat: bool) -> dict:
    """The encoded prompt; with `chat`, as one user message in the tokenizer's chat template."""
    if not chat:
        return tok(prompt, return_tensors="pt")
    check_chat(tok, chat)
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return tok(text, return_tensors="pt", add_special_tokens=False)


def complete(model, tok, prompt: str, max_new_tokens: int = 48, temperature: float = 0.0, chat: bool = False) -> str:
    """The prompt followed by the model's continuation (greedy at temperature 0)."""
    enc = prompt_ids(tok, prompt, chat)
    sample = dict(do_sample=True, temperature=temperature, top_p=0.95) if temperature > 0 else dict(do_sample=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, repetition_penalty=1.2,
                             pad_token_id=tok.pad_token_id or tok.eos_token_id, **sample)
    return prompt + tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def generate_text(model_dir: str, prompt: str, max_new_tokens: int = 48, temperature: float = 0.0,
                  chat: bool = False) -> str:
    """Load `model_dir` (folder, quantised export or .gguf) and complete one prompt."""
    model, tok = load_for_generation(model_dir, chat)
    return complete(model, tok, prompt, max_new_tokens, temperature, chat)
