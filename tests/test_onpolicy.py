"""On-policy runs end to end on a tiny teacher: lmbda=0 is today's run, metrics, eval.json, kill -9 + resume."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import CORPUS
from safetensors.torch import load_file

from kdistill.base.errors import ConfigError
from kdistill.config.schema import load_config
from kdistill.run.distill import distill

ROOT = Path(__file__).parents[1]
FAST = ["train.seq_len=32", "train.batch_size=4", "train.threads=1", "student.num_layers=1", "eval.max_new_tokens=4",
        "eval.measure_speed=false", "eval.max_batches=1", "train.eval_every=1000", "data.format=text"]
ON = ["rollout.source=student", "rollout.max_new_tokens=8", "rollout.prompt_tokens=8"]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("\n".join(CORPUS * 3))
    return str(path)


def _cfg(teacher_dir, text_file, out, *extra):
    return load_config(None, [f"teacher.model={teacher_dir}", f"data.path={text_file}", f"output_dir={out}",
                              *FAST, *extra])


def _weights(out):
    return load_file(str(Path(out) / "student" / "model.safetensors"))


def test_lmbda_zero_and_source_data_are_bit_identical_to_the_off_policy_run(teacher_dir, text_file, tmp_path):
    runs = {"plain": [], "lmbda0": [*ON, "rollout.lmbda=0"], "data": ["rollout.source=data", "rollout.lmbda=1"]}
    weights = {name: (distill(_cfg(teacher_dir, text_file, tmp_path / name, "train.max_steps=3", *extra)),
                      _weights(tmp_path / name))[1] for name, extra in runs.items()}
    for name in ("lmbda0", "data"):
        for k, v in weights["plain"].items():
            assert torch.equal(v, weights[name][k]), (name, k)


def test_an_on_policy_run_logs_rollouts_and_grades_exposure(teacher_dir, text_file, tmp_path):
    out = tmp_path / "run"
    result = distill(_cfg(teacher_dir, text_file, out, "train.max_steps=4", *ON, "rollout.lmbda=0.5",
                          "rollout.buffer=2", "loss.terms=[{kind: reverse_kl_pg, gamma: 1.0}, {kind: jsd}]"))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
    assert all("rollout_tokens" in r and "rollout_staleness" in r for r in rows)
    rollouts = [r for r in rows if r["rollout_staleness"] is not None]
    assert rollouts and all(r["tokens"] == r["rollout_tokens"] for r in rollouts)  # recounted after generation
    assert all(r["rollout_tokens"] == 0 for r in rows if r["rollout_staleness"] is None)
    assert all(abs(r["loss"]) < 1e6 for r in rows)
    exposure = json.loads((out / "eval.json").read_text())["exposure"]
    assert exposure == result["exposure"] and exposure["student_sample_tokens"] > 0
    assert exposure["teacher_nll_of_student_samples"] > 0 and exposure["student_nll_of_teacher_samples"] > 0


def test_on_policy_with_a_teacher_cache_is_refused_before_anything_loads(tmp_path):
    out = tmp_path / "run"
    cfg = load_config(None, [f"teacher.cache={tmp_path / 'no-cache'}", f"output_dir={out}", *ON])
    with pytest.raises(ConfigError, match="cannot score new text"):
        distill(cfg)
    assert not out.exists()


def _run_cli(args):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "kdistill", "distill", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_kill_and_resume_an_on_policy_run_gives_the_same_student(teacher_dir, text_file, tmp_path):
    common = [f"teacher.model={teacher_dir}", f"data.path={text_file}", *FAST, *ON, "rollout.lmbda=0.5",
              "rollout.buffer=2", "train.max_steps=30", "train.checkpoint_every=3",
              "loss.terms=[{kind: reverse_kl_pg, gamma: 0.9}, {kind: forward_kl}]"]
    straight = _run_cli([*common, f"output_dir={tmp_path / 'a'}"])
    assert straight.wait(timeout=300) == 0, straight.stdout.read()
    run = _run_cli([*common, f"output_dir={tmp_path / 'b'}"])
    ckpts = tmp_path / "b" / "checkpoints"
    deadline = time.time() + 200
    while not (ckpts.is_dir() and any(p.name == "step-000009" for p in ckpts.iterdir())):
        assert run.poll() is None, run.stdout.read()
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    assert not list(ckpts.glob("step-000030")), "killed too late to test resume"
    resumed = _run_cli([*common, f"output_dir={tmp_path / 'b'}", "--resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    rows_a = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_b] == list(range(31))
    assert [r.get("rollout_staleness") for r in rows_a] == [r.get("rollout_staleness") for r in rows_b]
    assert any(r.get("rollout_staleness") == 1 for r in rows_a)


@pytest.mark.parametrize("extra", [["rollout.source=teacher"], ["rollout.teacher_mix=0.3", "rollout.top_p=0.9",
                                                                "rollout.temperature=0.8"]],
                         ids=["teacher_writes", "teacher_mixed"])
def test_teacher_written_and_teacher_mixed_rollouts_train(teacher_dir, text_file, tmp_path, extra):
    out = tmp_path / "run"
    distill(_cfg(teacher_dir, text_file, out, "train.max_steps=2", *ON, "rollout.lmbda=1", *extra,
                 "loss.terms=[{kind: reverse_kl_pg}]"))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
    assert all(r["rollout_staleness"] == 0 and r["rollout_tokens"] == r["tokens"] > 0 for r in rows)
