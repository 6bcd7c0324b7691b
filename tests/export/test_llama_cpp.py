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
@pytest.mark.parametrize("qtype,kl_bound", [("F32", 1e-4), ("F16", 1e-3), ("Q8_0", 2e-3), ("Q5_0", 1e-2),
                                             ("Q4_0", 5e-2)])
def test_llama_cpp_runs_the_export(student_dir, tmp_path, qtype, kl_bound, backend):
    native = _backend(backend)
    path = export_gguf(student_dir, tmp_path / f"s-{qtype}.gguf", qtype)
    report = llama_cpp_report(student_dir, path, text=" ".join(SENTENCES), max_tokens=96, native=native)
    print(qtype, backend, report)
    assert report["tokens_match"], report
    assert report["kl_mean"] <= kl_bound, report


FAKE_BINARY = '''#!{python}
"""Stands in for llama_cpp_logits: the HF student's own tokens and logits, in the binary's file format."""
import sys
import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model_dir = {model_dir!r}
_, gguf, text_file, ids_file, out = sys.argv
ids = np.fromfile(ids_file, np.int32)
tok = AutoTokenizer.from_pretrained(model_dir)
text = open(text_file, encoding="utf-8").read()
np.asarray(tok(text, add_special_tokens=False)["input_ids"], np.int32).tofile(out + "/ids.i32")
with torch.no_grad():
    logits = AutoModelForCausalLM.from_pretrained(model_dir)(torch.tensor([ids.tolist()])).logits[0]
logits.float().numpy().tofile(out + "/logits.f32")
'''


def test_native_check_reads_the_binary_files_and_reports_its_errors(student_dir, tmp_path):
    """The --native plumbing, with a stand-in binary: identical model -> tokens match, KL 0; a failing one -> error."""
    import stat
    import sys

    from kdistill.base.errors import ModelError

    fake = tmp_path / "fake_llama_cpp_logits"
    fake.write_text(FAKE_BINARY.format(python=sys.executable, model_dir=str(student_dir)))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    report = llama_cpp_report(student_dir, tmp_path / "unused.gguf", text=" ".join(SENTENCES), max_tokens=40,
                              native=fake)
    assert report["tokens_match"] and report["tokens"] == 40
    assert report["kl_mean"] < 1e-6 and report["top1_agreement"] == 1.0
    broken = tmp_path / "broken"
    broken.write_text("#!/bin/sh\necho 'cannot load model' >&2\nexit 1\n")
    broken.chmod(broken.stat().st_mode | stat.S_IEXEC)
    with pytest.raises(ModelError, match="broken could not run .*cannot load model"):
        llama_cpp_report(student_dir, tmp_path / "x.gguf", native=broken)
