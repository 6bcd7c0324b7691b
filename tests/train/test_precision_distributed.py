"""train.precision=fp16 under two processes (torchrun, gloo, CPU): FSDP2 trains with the sharded loss
scaler (fused AdamW's DTensor state once broke a scaler-driven step) and checkpoints the scaler's state."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
FAST = ["train.seq_len=32", "train.batch_size=4", "train.threads=1", "data.generate.num_samples=16",
        "data.generate.max_new_tokens=24", "student.num_layers=1", "eval.max_new_tokens=2",
        "eval.measure_speed=false", "eval.prompts=[Once]", "train.max_steps=3", "train.eval_every=3",
        "student.layer_selection=first_last", "train.warmup_steps=0", "train.checkpoint_every=3"]


@pytest.mark.parametrize("mode", ["fsdp"])
def test_fp16_trains_under_two_processes_with_its_scaler_checkpointed(teacher_dir, tmp_path, mode):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KDISTILL_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "kdistill",
           "distill", f"teacher.model={teacher_dir}", *FAST, f"output_dir={out}", f"train.distributed={mode}",
           "train.precision=fp16"]
    done = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["step"] > 0]
    assert [(r["step"], r["skipped_step"], r["loss_scale"]) for r in rows] == [(s, 0, 65536.0) for s in (1, 2, 3)]
    assert all(0 < r["loss"] < 100 and 0 < r["grad_norm"] < 100 for r in rows)
    state = json.loads((out / "checkpoints" / "step-000003" / "trainer_state.json").read_text())
    assert state["grad_scaler"]["scaler"]["_growth_tracker"] == 3 and state["grad_scaler"]["skipped_in_row"] == 0
