"""Run an exported GGUF in llama.cpp itself and compare it with the HF student (needs llama-cpp-python).

    pip install llama-cpp-python   # builds llama.cpp from source: about half an hour on 2 CPU cores
    python -m kdistill.export.llama_cpp_check --model runs/student/final --gguf student-q8_0.gguf
    python -m kdistill.export.llama_cpp_check --model DIR --gguf FILE --native ./llama_cpp_logits

`--native` runs scripts/llama_cpp_logits.cpp built against a llama.cpp tree (how: scripts/gpu_check.sh)
instead of the Python bindings: the same check with nothing between llama.cpp and the numbers.

Checks that llama.cpp loads the file, tokenizes held-out text to the same ids as the HF tokenizer, and
gives next-token distributions close to the float student: mean KL(fp32 student || llama.cpp) per
token, top-1 agreement and max |logit error| on the same ids. The test suite uses transformers' GGUF
reader instead (tests/export/test_gguf_roundtrip.py); tests/export/test_llama_cpp.py runs this check
when llama_cpp is installed and is skipped otherwise.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from kdistill.base.errors import KdistillError, ModelError
from kdistill.export.gguf_writer import load_student
from kdistill.export.measure import HELD_OUT_TEXT, kl_per_token


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


def native_logits(binary, gguf_path, text: str, ids: list[int]) -> tuple[list[int], np.ndarray]:
    """llama.cpp's ids for `text` and its logits for `ids`, from the scripts/llama_cpp_logits.cpp binary.

    Shapes: ids (T,) -> (cpp ids, logits (T, V))
    """
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "text.txt").write_text(text, encoding="utf-8")
        np.asarray(ids, np.int32).tofile(tmp / "ids.in")
        run = subprocess.run([str(binary), str(gguf_path), str(tmp / "text.txt"), str(tmp / "ids.in"), str(tmp)],
                             capture_output=True, text=True)
        if run.returncode != 0:
            raise ModelError(f"{binary} could not run {gguf_path}: {run.stderr.strip()[-2000:]}")
        cpp_ids = np.fromfile(tmp / "ids.i32", np.int32).tolist()
        logits = np.fromfile(tmp / "logits.f32", np.float32).reshape(len(ids), -1)
    return cpp_ids, logits


@torch.no_grad()
def llama_cpp_report(model_dir, gguf_path, text: str = HELD_OUT_TEXT, max_tokens: int = 256,
                     native=None) -> dict:
    """Tokens and logits of `gguf_path` in llama.cpp against the float student in `model_dir`.

    native: path of the built scripts/llama_cpp_logits.cpp; None uses llama-cpp-python.
    """
    model, tokenizer = load_student(model_dir)
    hf_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n_ctx = min(model.config.max_position_embeddings, max_tokens)
    ids = hf_ids[:n_ctx]
    if native is not None:
        cpp_ids, cpp_logits = native_logits(native, gguf_path, text, ids)
    else:
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
    parser.add_argument("--native", help="a built scripts/llama_cpp_logits.cpp to use instead of llama-cpp-python")
    args = parser.parse_args(argv)
    try:
        report = llama_cpp_report(args.model, args.gguf, max_tokens=args.max_tokens, native=args.native)
    except KdistillError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for key, value in report.items():
        print(f"{key:<22} {value}")
    return 0 if report["tokens_match"] else 1


if __name__ == "__main__":
    sys.exit(main())
