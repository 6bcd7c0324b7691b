"""A cross-tokenizer run killed with SIGKILL resumes from its last checkpoint to the same student."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from cross_helpers import save_other_tokenizer
from safetensors.torch import load_file

ROOT = Path(__file__).parents[2]
RECORDS = [{"instruction": f"Say thing {i}.", "response": t} for i, t in enumerate(
    ["Crème brûlée à la française 👋", "Once upon a time there was a fox.", "日本語 🚀 naïve façade"] * 4)]


def _run(args):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "kdistill", "distill", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_cross_tokenizer_run_resumes_after_kill_9(teacher_dir, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    common = [f"teacher.model={teacher_dir}", f"student.tokenizer={save_other_tokenizer(tmp_path / 'tok')}",
              f"data.path={data}", "train.seq_len=40", "train.batch_size=4", "train.threads=1",
              "student.num_layers=1", "eval.max_new_tokens=2", "eval.measure_speed=false", "eval.max_batches=1",
              "train.max_steps=60", "train.checkpoint_every=4", "train.eval_every=1000",
              "loss.terms=[{kind: hybrid, top_k: 20}, {kind: uld, weight: 0.5}, {kind: ce, weight: 0.1}]"]
    straight = _run([*common, f"output_dir={tmp_path / 'a'}"])
    assert straight.wait(timeout=300) == 0, straight.stdout.read()
    run = _run([*common, f"output_dir={tmp_path / 'b'}"])
    ckpts = tmp_path / "b" / "checkpoints"
    deadline = time.time() + 200
    while not (ckpts.is_dir() and any(p.name == "step-000008" for p in ckpts.iterdir())):
        assert run.poll() is None, run.stdout.read()
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    assert not list(ckpts.glob("step-000060")), "killed too late to test resume"
    resumed = _run([*common, f"output_dir={tmp_path / 'b'}", "--resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    a = load_file(str(tmp_path / "a" / "student" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "student" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(61))
    held = json.loads((tmp_path / "b" / "eval.json").read_text())["heldout"]
    assert held["bpb_student"] > 0 and held["groups"] > 0
