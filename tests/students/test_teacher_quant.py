"""A teacher held in 8 or 4 bits through bitsandbytes (CPU): close to full precision, in less memory."""
import sys

import pytest
import torch

from kdistill.base.errors import ModelError
from kdistill.models.teacher import load_teacher, teacher_memory

CPU = torch.device("cpu")


@pytest.mark.parametrize("load_in, ratio, tolerance", [("8bit", 0.75, 0.05), ("4bit", 0.6, 0.3)])
def test_quantised_teacher_is_close_and_smaller(teacher_dir, load_in, ratio, tolerance):
    pytest.importorskip("bitsandbytes")
    full, tok, _ = load_teacher(teacher_dir, CPU, torch.float32)
    small, _, folder = load_teacher(teacher_dir, CPU, torch.float32, load_in=load_in)
    assert folder == teacher_dir and not any(p.requires_grad for p in small.parameters())
    ids = tok("Once upon a time there was a little fox", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a, b = full(ids).logits.log_softmax(-1), small(ids).logits.log_softmax(-1)
    kl = (a.exp() * (a - b)).sum(-1).mean().item()
    assert kl < tolerance
    memory, plain = teacher_memory(small, torch.float32), teacher_memory(full, torch.float32)
    assert memory["full_mb"] == pytest.approx(plain["held_mb"]) and plain["saved_mb"] == 0
    assert memory["held_mb"] < ratio * memory["full_mb"] and memory["saved_mb"] > 0


def test_missing_bitsandbytes_names_the_key_and_the_fix(teacher_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    with pytest.raises(ModelError, match=r"teacher.load_in=4bit needs bitsandbytes.*pip install bitsandbytes.*"
                                         r"teacher.load_in=full"):
        load_teacher(teacher_dir, CPU, torch.float32, load_in="4bit")
