"""The exported GGUF in llama.cpp itself; skipped unless llama-cpp-python is installed.

Bounds (llama.cpp keeps its KV cache in f16, so even F32 weights are not bit-exact): mean KL per token
at most 1e-4 (F32) and 2e-3 (Q8_0), and llama.cpp's tokenizer gives the HF tokenizer's ids.
"""
import pytest

from kdistill.export import export_gguf
from kdistill.export.llama_cpp_check import llama_cpp_report

from .export_fixtures import SENTENCES

pytest.importorskip("llama_cpp")


@pytest.mark.parametrize("qtype,kl_bound", [("F32", 1e-4), ("Q8_0", 2e-3)])
def test_llama_cpp_runs_the_export(student_dir, tmp_path, qtype, kl_bound):
    path = export_gguf(student_dir, tmp_path / f"s-{qtype}.gguf", qtype)
    report = llama_cpp_report(student_dir, path, text=" ".join(SENTENCES), max_tokens=96)
    assert report["tokens_match"], report
    assert report["kl_mean"] <= kl_bound, report
