"""The exported GGUF in llama.cpp itself, through llama-cpp-python or through scripts/llama_cpp_logits.cpp
built against llama.cpp ($KDISTILL_LLAMA_CPP_LOGITS names the binary; scripts/gpu_check.sh builds it).
Each backend's test is skipped when it is not installed (CI has neither; the test suite's GGUF checks use
transformers' reader, tests/export/test_gguf_roundtrip.py).

Bounds (llama.cpp keeps its KV cache in f16, so even F32 weights are not bit-exact): mean KL per token
at most 1e-4 (F32) and 2e-3 (Q8_0), and llama.cpp's tokenizer gives the HF tokenizer's ids.
"""
import os

import pytest

from kdistill.export import export_gguf
from kdistill.export.llama_cpp_check import llama_cpp_report

from .export_fixtures import SENTENCES


def _backend(name):
    if name == "python":
        pytest.importorskip("llama_cpp")
        return None
    binary = os.environ.get("KDISTILL_LLAMA_CPP_LOGITS")
    if not binary:
        pytest.skip("set KDISTILL_LLAMA_CPP_LOGITS to a built scripts/llama_cpp_logits.cpp")
    return binary


@pytest.mark.parametrize("backend", ["native", "python"])
@pytest.mark.parametrize("qtype,kl_bound", [("F32", 1e-4), ("F16", 1e-3), ("Q8_0", 2e-3), ("Q4_0", 5e-2)])
def test_llama_cpp_runs_the_export(student_dir, tmp_path, qtype, kl_bound, backend):
    native = _backend(backend)
    path = export_gguf(student_dir, tmp_path / f"s-{qtype}.gguf", qtype)
    report = llama_cpp_report(student_dir, path, text=" ".join(SENTENCES), max_tokens=96, native=native)
    print(qtype, backend, report)
    assert report["tokens_match"], report
    assert report["kl_mean"] <= kl_bound, report
