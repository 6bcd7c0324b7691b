"""Every shipped LLaMA-student config trains for a step, on a tiny teacher standing in for the real one."""
from pathlib import Path

import pytest
from helpers import save_tiny_teacher

from kdistill.config.schema import load_config
from kdistill.run.distill import distill

CONFIGS = sorted(Path(__file__).parents[2].joinpath("configs").glob("*.yaml"))
LLAMA = [c for c in CONFIGS if load_config(c).student.kind == "llama"]
# a tiny random teacher answers no problem right: keep its samples unchecked, and ask for few of them
EXTRA = {"cot": ["data.generate.cot.check=false", "data.generate.cot.max_problems=4", "data.generate.samples_per_prompt=1"],
         "self_instruct": ["data.generate.self_instruct.num_instructions=4", "data.generate.filter.min_chars=1"]}


@pytest.mark.parametrize("path", LLAMA, ids=lambda p: p.stem)
def test_llama_config_trains_a_step(path, tmp_path, monkeypatch):
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))
    teacher = save_tiny_teacher(tmp_path / "teacher")
    small = ["student.num_layers=1", "student.hidden_size=32", "student.intermediate_size=64"] \
        if load_config(path).student.preset != "auto" else ["student.num_layers=1"]
    cfg = load_config(path, [f"teacher.model={teacher}", f"output_dir={tmp_path / 'run'}", "train.max_steps=1",
                             "train.seq_len=32", "train.batch_size=2", "data.generate.num_samples=8",
                             "data.generate.max_new_tokens=16", "eval.max_new_tokens=2", "eval.max_batches=1",
                             "train.threads=1", "eval.measure_speed=false", "rollout.max_new_tokens=8",
                             "rollout.prompt_tokens=8", *small, *EXTRA.get(path.stem, [])])
    for entry in cfg.teacher.sources:  # several teachers: each live one is the tiny teacher too
        if entry.get("kind", "model") == "model":
            entry["model"] = teacher
    result = distill(cfg)
    assert (tmp_path / "run" / "student" / "config.json").is_file()
    assert result["heldout"]["tokens"] > 0
