"""The loop end to end: a diverging run keeps only finite checkpoints and says which one is good, a
broken teacher is named as the cause, and SIGTERM stops after the step with a checkpoint (exit 143)."""
import json
import signal
from pathlib import Path

import pytest
import torch
from helpers import signal_a_run
from safetensors.torch import load_file

from kdistill.config.schema import load_config
from kdistill.run.distill import distill
from kdistill.train import checkpoint, loop
from kdistill.train.step import NonFiniteTeacher, NonFiniteUpdate

FAST = ["train.seq_len=32", "train.batch_size=4", "train.threads=1", "data.generate.num_samples=16",
        "data.generate.max_new_tokens=24", "student.num_layers=1", "eval.max_new_tokens=4",
        "eval.measure_speed=false", "eval.prompts=[Once]"]


def _cfg(teacher_dir, out, *extra):
    return load_config(None, [f"teacher.model={teacher_dir}", f"output_dir={out}", *FAST, *extra])


def _finite(folder: Path) -> bool:
    tensors = {**load_file(str(folder / "model.safetensors")), **load_file(str(folder / "optimizer.safetensors"))}
    return all(torch.isfinite(v).all() for v in tensors.values())


def test_a_diverging_update_keeps_the_last_good_checkpoint_and_resume_continues_from_it(teacher_dir, tmp_path,
                                                                                       monkeypatch):
    """Step 2 runs at lr=inf (what train.lr=.inf did from step 1): its weights are never checkpointed, the
    error says the update diverged and names step-000001, and --resume goes on from finite weights."""
    out, real, calls = tmp_path / "run", loop.train_step, {"n": 0}

    def diverging(model, source, optimizer, *args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            for group in optimizer.param_groups:
                group["lr"] = float("inf")
        return real(model, source, optimizer, *args, **kw)

    monkeypatch.setattr(loop, "train_step", diverging)
    with pytest.raises(NonFiniteUpdate) as e:
        distill(_cfg(teacher_dir, out, "train.max_steps=3", "train.checkpoint_every=1"))
    message = str(e.value)
    assert message.startswith("step 2: the optimizer's update made the weights non-finite")
    assert f"the last good checkpoint is kept: {out / 'checkpoints' / 'step-000001'}" in message
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000001"]
    assert _finite(out / "checkpoints" / "step-000001")
    monkeypatch.undo()
    distill(_cfg(teacher_dir, out, "train.max_steps=3", "train.checkpoint_every=1"), resume=True)
    assert all(_finite(p) for p in checkpoint.list_checkpoints(out))
    student = load_file(str(out / "student" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in student.values())


def test_a_teacher_whose_weights_hold_nan_is_named_as_the_cause(tmp_path):
    from helpers import save_tiny_teacher
    from transformers import AutoModelForCausalLM

    teacher = save_tiny_teacher(tmp_path / "t")
    model = AutoModelForCausalLM.from_pretrained(teacher)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[3, 5] = float("nan")
    model.save_pretrained(teacher)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": f"Once upon a time a fox ran {i} miles."}) + "\n" for i in range(40)))
    out = tmp_path / "run"
    with pytest.raises(NonFiniteTeacher, match=r"^step 1: the teacher's signal is not finite .*NaN.*teacher.model"
                                               r".*no checkpoint was written before it") as e:
        distill(_cfg(teacher, out, f"data.path={data}", "train.max_steps=2", "train.checkpoint_every=1"))
    assert "lower train.lr" not in str(e.value).lower().replace("a lower train.lr will not help", "")
    assert not checkpoint.list_checkpoints(out)


def test_sigterm_stops_after_the_step_with_a_checkpoint_and_exits_143(teacher_dir, tmp_path):
    out = tmp_path / "run"
    status, err, step = signal_a_run(teacher_dir, out, signal.SIGTERM, FAST)
    assert status == 143, err  # 128 + SIGTERM, the shell's convention, after the checkpoint
    assert 1 <= step < 400
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"step-{step:06d}"]
    assert checkpoint.checkpoint_problem(out / "checkpoints" / f"step-{step:06d}") is None
    last = err.strip().splitlines()[-1]
    assert f"stopped by SIGTERM after step {step}" in last and "--resume" in last and "Traceback" not in err
