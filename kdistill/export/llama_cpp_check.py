"""Run an exported GGUF in llama.cpp itself and compare it with the HF student (needs llama-cpp-python).

    pip install llama-cpp-python   # builds llama.cpp from source: about half an hour on 2 CPU cores
    python -m kdistill.export.llama_cpp_check --model runs/student/final --gguf student-q8_0.gguf

Checks that llama.cpp loads the file, tokenizes held-out text to the same ids as the HF tokenizer, and
gives next-token distributions close to the float student: mean KL(fp32 student || llama.cpp) per
token, top-1 agreement and max |logit error| on the same ids. The test suite uses transformers' GGUF
reader instead (tests/export/test_gguf_roundtrip.py); tests/export/test_llama_cpp.py runs this check
when llama_cpp is installed and is skipped otherwise.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from ..errors import KdistillError, ModelError
from .gguf_writer import load_student
from .measure import HELD_OUT_TEXT, kl_per_token


def llama_cpp_logits(gguf_path, ids: list[int], n_ctx: int):
    """The llama.cpp model and its logits for `ids`. Shapes: ids (T,) -> logits (T, V)"""
    try:
        from llama_cpp import Llama
    except ImportError as e:
        raise ModelError("llama_cpp_check needs llama-cpp-python: pip install llama-cpp-python "
                         "(it compiles llama.cpp, about half an hour on 2 cores)") from e
    llm = Llama(model_path=str(gguf_path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=1,
                seed=0)
    llm.reset()
    llm.eval(ids)
    scores = llm.scores if hasattr(llm, "scores") else llm._scores
    return llm, np.array(scores[:len(ids)], dtype=np.float32)


@torch.no_grad()
def llama_cpp_report(model_dir, gguf_path, text: str = HELD_OUT_TEXT, max_tokens: int = 256) -> dict:
    """Tokens and logits of `gguf_path` in llama.cpp against the float student in `model_dir`."""
    model, tokenizer = load_student(model_dir)
    hf_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n_ctx = min(model.config.max_position_embeddings, max_tokens)
    ids = hf_ids[:n_ctx]
    llm, cpp_logits = llama_cpp_logits(gguf_path, ids, n_ctx)
    cpp_ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    mismatch = next((i for i, (a, b) in enumerate(zip(hf_ids, cpp_ids)) if a != b), None)
    if mismatch is None and len(hf_ids) != len(cpp_ids):
        mismatch = min(len(hf_ids), len(cpp_ids))
    ref = model(torch.tensor([ids])).logits[0].float()
    got = torch.from_numpy(cpp_logits)
    return {"tokens_match": mismatch is None, "first_token_mismatch": mismatch, "tokens": len(ids),
            "kl_mean": kl_per_token(ref[None], got[None]).mean().item(),
            "top1_agreement": (ref.argmax(-1) == got.argmax(-1)).float().mean().item(),
            "max_abs_logit_error": (ref - got).abs().max().item()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdistill.export.llama_cpp_check",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the HF student folder the GGUF was exported from")
    parser.add_argument("--gguf", required=True, help="the exported .gguf file")
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args(argv)
    try:
        report = llama_cpp_report(args.model, args.gguf, max_tokens=args.max_tokens)
    except KdistillError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for key, value in report.items():
        print(f"{key:<22} {value}")
    return 0 if report["tokens_match"] else 1


if __name__ == "__main__":
    sys.exit(main())
