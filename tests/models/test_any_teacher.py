"""`kdistill distill` with a tiny teacher of each family: sized from its config, initialised where the
block structure allows, trained through the teacher source (the model's logits where the head is not a
plain linear layer, e.g. Phi's biased head), and saying how the student was initialised."""
import json

import pytest
from helpers import TEACHER_ARCHS, save_tiny_teacher

from kdistill.commands.cli import main

FAST = ["train.seq_len=32", "train.batch_size=4", "train.threads=1", "data.generate.num_samples=8",
        "data.generate.max_new_tokens=16", "student.num_layers=1", "eval.max_new_tokens=2",
        "eval.measure_speed=false", "eval.prompts=[Once]", "train.max_steps=2", "train.eval_every=2"]
COPIES_LAYERS = {"llama", "qwen2", "mistral"}


@pytest.mark.parametrize("arch", TEACHER_ARCHS)
def test_distill_from_a_teacher_of_each_family(arch, tmp_path, capsys):
    teacher = save_tiny_teacher(tmp_path / arch, seed=1, arch=arch)
    out = tmp_path / "run"
    assert main(["distill", f"teacher.model={teacher}", f"output_dir={out}", *FAST]) == 0
    printed = capsys.readouterr().out
    line = next(l for l in printed.splitlines() if l.startswith("student:"))
    assert "initialised:" in line
    if arch in COPIES_LAYERS:
        assert "embeddings copied" in line and "random" not in line, line
    else:
        assert "random" in line, line  # no LLaMA-compatible blocks: says the layers start random
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and rows[-1]["eval_kl"] >= 0
    result = json.loads((out / "eval.json").read_text())
    assert result["heldout"]["tokens"] > 0 and result["teacher_source"]["kind"] == "model"
