"""Feature terms under FSDP2: two processes (gloo, 1 thread each) train a hidden-state term with a projection
(student width 16 -> teacher 32) like one process with the same global batch, and a resumed two-process
run keeps the projections exactly."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kdistill.config.schema import load_config
from kdistill.run.distill import distill
from kdistill.train import checkpoint

FAST = ["train.seq_len=32", "train.batch_size=4", "train.threads=1", "data.generate.num_samples=16",
        "data.generate.max_new_tokens=24", "student.num_layers=2", "student.hidden_size=16", "student.num_heads=2",
        "student.num_kv_heads=1", "eval.max_new_tokens=2", "eval.measure_speed=false", "eval.prompts=[Once]",
        "train.max_steps=3", "train.eval_every=3", "train.lr=0.01", "train.warmup_steps=0",
        "train.checkpoint_every=1", "train.keep_checkpoints=3",
        "loss.terms=[{kind: forward_kl}, {kind: hidden_mse, pairs: [[0, 0], [1, 1]], weight: 0.5}]"]


ROOT = Path(__file__).parents[2]


def torchrun(args: list[str], n: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KDISTILL_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           "-m", "kdistill", "distill", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def _rows(out) -> list[dict]:
    return [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]


def _tensors(out, step: int, name: str) -> dict:
    return load_file(str(out / "checkpoints" / f"step-{step:06d}" / name))


def test_two_fsdp_processes_train_features_like_one_and_resume_with_the_projections(teacher_dir, tmp_path):
    common = [f"teacher.model={teacher_dir}", *FAST]
    distill(load_config(None, [*common, f"output_dir={tmp_path / 'one'}"]))
    done = torchrun([*common, f"output_dir={tmp_path / 'two'}", "train.distributed=fsdp"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "process 1 of 2 (fsdp)" in done.stderr
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert [r["step"] for r in two] == [0, 1, 2, 3]
    for a, b in zip(one[1:], two[1:]):
        for key in ("loss", "hidden_mse", "forward_kl"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
    assert two[3]["hidden_mse"] != pytest.approx(two[1]["hidden_mse"], rel=1e-3)  # the term moves
    for name in ("model.safetensors", checkpoint.FEATURE_TENSORS):
        a, b = _tensors(tmp_path / "one", 3, name), _tensors(tmp_path / "two", 3, name)
        assert a.keys() == b.keys() and a, name
        for k in a:  # whole tensors (gathered from the shards), equal to one process's to fp32 tolerance
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=5e-5)
    projections = _tensors(tmp_path / "two", 3, checkpoint.FEATURE_TENSORS)
    assert {tuple(v.shape) for v in projections.values()} == {(32, 16)}
    first = _tensors(tmp_path / "two", 1, checkpoint.FEATURE_TENSORS)
    assert any(not torch.equal(first[k], projections[k]) for k in first)  # the projections train

    split = shutil.copytree(tmp_path / "two", tmp_path / "split")  # as if killed right after step 2's checkpoint
    shutil.rmtree(split / "checkpoints" / "step-000003")
    shutil.rmtree(split / "student")
    (split / "eval.json").unlink()
    resumed = torchrun([*common, f"output_dir={split}", "train.distributed=fsdp", "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for name in ("model.safetensors", checkpoint.FEATURE_TENSORS):
        a, b = _tensors(tmp_path / "two", 3, name), _tensors(split, 3, name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_an_ema_teacher_under_fsdp_follows_the_sharded_student_like_one_process(teacher_dir, tmp_path):
    """The shadow gathers the student's shards after each step: its weights and the hidden term against it
    equal one process's."""
    common = [f"teacher.model={teacher_dir}", "teacher.sources=[{name: ema, kind: ema, update_rate: 0.5}]", *FAST,
              "loss.terms=[{kind: forward_kl}, {kind: hidden_mse, pairs: from_init}]"]
    distill(load_config(None, [*common, f"output_dir={tmp_path / 'one'}"]))
    done = torchrun([*common, f"output_dir={tmp_path / 'two'}", "train.distributed=fsdp"])
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    for a, b in zip(one[1:], two[1:]):
        # the sharded reduction orders its sums differently, and Adam's near-eps updates amplify that to
        # ~3e-4 relative by step 3 (the weights below are checked the same way)
        assert b["hidden_mse/ema"] == pytest.approx(a["hidden_mse/ema"], rel=2e-3, abs=1e-7), a["step"]
    assert two[3]["hidden_mse/ema"] > 0
    for name in ("source.safetensors", checkpoint.FEATURE_TENSORS):
        a, b = _tensors(tmp_path / "one", 3, name), _tensors(tmp_path / "two", 3, name)
        assert a.keys() == b.keys() and a, name
        for k in a:
            # Adam divides by sqrt(v) + eps: a weight whose gradient is near eps moves by a part of lr (0.01)
            # that the processes' summation order changes (seen: up to 3.9e-3 on single elements of a
            # projection, 1.6e-5 its mean, most elements within 1e-8). So at most 5% of a tensor's elements
            # differ by more than 1e-4 and none by more than the 3 steps at lr 0.01 can move it; a shard not
            # gathered (half a tensor off by ~0.01) fails the first.
            diff = (b[k] - a[k]).abs()
            off = float((diff > 1e-4).float().mean())
            assert off <= 0.05 and diff.max() <= 3 * 0.01, (name, k, off, float(diff.max()))
