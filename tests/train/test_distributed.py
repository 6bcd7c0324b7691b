"""Two processes (gloo, 1 thread each) under torchrun give the weights of one process with the same global
batch, write metrics.jsonl once, and a run of more processes than rows is refused."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kdistill.config.schema import load_config
from kdistill.run.distill import distill

ROOT = Path(__file__).parents[2]
FAST = ["train.seq_len=32", "train.batch_size=4", "train.threads=1", "data.generate.num_samples=16",
        "data.generate.max_new_tokens=24", "student.num_layers=1", "eval.max_new_tokens=2",
        "eval.measure_speed=false", "eval.prompts=[Once]", "train.max_steps=3", "train.eval_every=3",
        "student.layer_selection=first_last", "train.lr=0.01", "train.warmup_steps=0", "train.checkpoint_every=3"]


def torchrun(args: list[str], n: int = 2, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KDISTILL_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           "-m", "kdistill", "distill", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _weights(out: Path) -> dict:
    return load_file(str(out / "student" / "model.safetensors"))


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_train_like_one(teacher_dir, tmp_path, mode):
    common = [f"teacher.model={teacher_dir}", *FAST, "train.debug_every=2"]
    distill(load_config(None, [*common, f"output_dir={tmp_path / 'one'}"]))
    done = torchrun([*common, f"output_dir={tmp_path / 'two'}", f"train.distributed={mode}"])
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=5e-5)  # fp32: gloo sums in another order
    rows = [json.loads(r) for r in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]  # one row per step, written once
    single = [json.loads(r) for r in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["loss"] == pytest.approx(single[1]["loss"], rel=1e-5)
    assert rows[1]["tokens"] == single[1]["tokens"]
    debugged = [k for k in single[2] if k.startswith(("grad_norm/", "update_ratio/"))]
    assert "grad_norm/layer_0" in debugged and "update_ratio/other" in debugged
    for k in debugged:  # the debugger sees whole layers under ddp and sums the shards under fsdp
        assert rows[2][k] == pytest.approx(single[2][k], rel=1e-3), k


def test_more_processes_than_rows_is_refused(teacher_dir, tmp_path):
    done = torchrun([f"teacher.model={teacher_dir}", *FAST, "train.batch_size=1", f"output_dir={tmp_path / 'r'}"])
    assert done.returncode != 0 and "kdistill distill: error: train.batch_size=1 is smaller than the 2 processes" \
        in done.stderr  # torchrun itself exits 1 when a process exits 2
    assert not (tmp_path / "r").exists()


def test_two_processes_from_a_teacher_cache_train_like_one(teacher_dir, tmp_path):
    from kdistill.run.cache import write_cache

    cache = tmp_path / "cache"
    write_cache(load_config(None, [f"teacher.model={teacher_dir}", f"cache.out={cache}", *FAST, "cache.k=16"]))
    common = [f"teacher.model={teacher_dir}", f"teacher.cache={cache}", *FAST]
    distill(load_config(None, [*common, f"output_dir={tmp_path / 'one'}"]))
    done = torchrun([*common, f"output_dir={tmp_path / 'two'}"])
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=5e-5)  # fp32: gloo sums in another order


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_a_killed_two_process_run_resumes_to_the_same_weights(teacher_dir, tmp_path, mode):
    import signal
    import time

    args = [f"teacher.model={teacher_dir}", *FAST, "train.max_steps=5", "train.checkpoint_every=1",
            "train.eval_every=5", f"train.distributed={mode}"]
    whole = torchrun([*args, f"output_dir={tmp_path / 'whole'}"])
    assert whole.returncode == 0, whole.stderr[-3000:]
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KDISTILL_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "kdistill",
           "distill", *args, f"output_dir={out}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and not (out / "checkpoints" / "step-000002").is_dir():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # every process of the run, at once
    proc.wait()
    assert not (out / "student").exists(), "the run finished before it was killed"
    resumed = torchrun([*args, f"output_dir={out}", "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _weights(tmp_path / "whole"), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == [0, 1, 2, 3, 4, 5]
    if mode == "fsdp":  # one process goes on from the two processes' checkpoint, and says it resharded
        more = subprocess.run([sys.executable, "-m", "kdistill", "distill", *args, f"output_dir={out}",
                               "train.max_steps=6", "--resume"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=240)
        assert more.returncode == 0, more.stderr[-3000:]
        assert "written by 2 processes (fsdp); resuming on 1" in more.stderr + more.stdout
        assert [json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines()][-1] == 6


def test_accelerate_launch_runs_two_processes_like_one(teacher_dir, tmp_path):
    """accelerate 1.x has no --multi_cpu: --multi_gpu starts torch elastic, and on a CPU kdistill takes gloo."""
    common = [f"teacher.model={teacher_dir}", *FAST]
    distill(load_config(None, [*common, f"output_dir={tmp_path / 'one'}"]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KDISTILL_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "-m", "kdistill", "distill", *common, f"output_dir={tmp_path / 'two'}"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "process 1 of 2 (ddp)" in done.stderr
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=5e-5)  # fp32: gloo sums in another order
    assert [json.loads(r)["step"] for r in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()] == \
        [0, 1, 2, 3]


def test_an_accelerate_launch_that_started_one_process_says_so(monkeypatch, caplog):
    import logging

    from kdistill.train import distributed

    cfg = load_config(None, [])
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with caplog.at_level(logging.WARNING, logger="kdistill"):
        distributed.check(cfg)
        assert "started one" not in caplog.text
        # what `accelerate launch --cpu --num_processes 2` sets before running one process
        monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
        distributed.check(cfg)
    assert "asked for several processes but started one" in caplog.text and "--multi_gpu" in caplog.text
