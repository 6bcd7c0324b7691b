"""`kdistill generate`: load a model folder (any causal LM, kdistill's own classes included) and complete.

The folder is checked first (`model_files.check_model_folder`): custom code, pickled or damaged weights
are refused with a ModelError, never run or unpickled.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .errors import ModelError
from .model_files import check_model_folder


def generate_text(model_dir: str, prompt: str, max_new_tokens: int = 48, temperature: float = 0.0) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not Path(model_dir).is_dir():
        raise ModelError(f"--model {model_dir}: no such folder (give a student folder such as runs/demo/student)")
    use_safetensors = check_model_folder(model_dir, "--model")
    try:
        tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, trust_remote_code=False,
                                                     use_safetensors=use_safetensors).eval()
    except (OSError, ValueError) as e:
        raise ModelError(f"--model {model_dir}: cannot load a model and tokenizer from it ({e})") from e
    enc = tok(prompt, return_tensors="pt")
    sample = dict(do_sample=True, temperature=temperature, top_p=0.95) if temperature > 0 else dict(do_sample=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, repetition_penalty=1.2,
                             pad_token_id=tok.pad_token_id or tok.eos_token_id, **sample)
    return prompt + tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
