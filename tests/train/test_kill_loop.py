"""kill -9 at random moments, resume each time: the student ends bit-identical to an uninterrupted run's
and the output folder holds no leftovers of the killed writes (temporaries, lock)."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

from kdistill.base import fsutil
from kdistill.config.schema import load_config
from kdistill.run.distill import distill
from kdistill.train import checkpoint

ROOT = Path(__file__).parents[2]
STEPS = 16
FAST = ["train.seq_len=32", "train.batch_size=4", "train.threads=1", "data.generate.num_samples=16",
        "data.generate.max_new_tokens=24", "student.num_layers=1", "eval.max_new_tokens=4",
        "eval.measure_speed=false", f"train.max_steps={STEPS}", "train.checkpoint_every=1",
        "train.eval_every=5", "train.keep_checkpoints=2"]


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "kdistill", "distill", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _newest_step(out: Path) -> int:
    found = checkpoint.list_checkpoints(out)
    return int(found[-1].name.split("-")[1]) if found else 0


def _writing(out: Path) -> bool:
    folder = out / "checkpoints"
    return folder.is_dir() and any(fsutil.PARTIAL.match(p.name) for p in folder.iterdir())


def _kill_when(run: subprocess.Popen, out: Path, kind: str, target: int, rng: random.Random) -> bool:
    """Kill -9 `run` at the moment `kind` describes; False if it finished first."""
    deadline = time.time() + 60
    if kind == "startup":
        time.sleep(rng.uniform(0.3, 3.0))
    else:
        while _newest_step(out) < target and not (kind == "mid-write" and _newest_step(out) >= target - 1
                                                  and _writing(out)):
            if run.poll() is not None:
                return False
            assert time.time() < deadline, "the run made no progress"
            time.sleep(0.001)
        if kind == "after":
            time.sleep(rng.uniform(0.0, 0.06))  # anywhere in the next step: forward, metrics, checkpoint
    if run.poll() is not None:
        return False
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    return True


def test_kill_9_at_random_moments_then_resume_gives_the_same_student(teacher_dir, tmp_path):
    common = [f"teacher.model={teacher_dir}", *FAST]
    rng = random.Random(1234)
    kinds = ["startup"] + [rng.choice(["mid-write", "after"]) for _ in range(rng.randint(3, 4))]
    targets = [0] + sorted(rng.sample(range(2, STEPS), len(kinds) - 1))
    out = tmp_path / "killed"
    run, kills = _start([*common, f"output_dir={out}"]), []
    for kind, target in zip(kinds, targets):
        if not _kill_when(run, out, kind, target, rng):
            break
        left = sorted(p.name for p in out.rglob("*") if fsutil.PARTIAL.match(p.name))
        kills.append(f"{kind} before step {target}: newest step {_newest_step(out)}, left {left}")
        again = "--resume" if checkpoint.list_checkpoints(out) else "--overwrite"
        run = _start([*common, f"output_dir={out}", again])
    assert run.wait(timeout=120) == 0, run.stderr.read()
    assert len(kills) >= 4, f"only {len(kills)} kills landed before the run finished: {kills}"
    assert any("left ['.step-" in k for k in kills), f"no kill landed inside a checkpoint write: {kills}"

    straight = tmp_path / "straight"
    distill(load_config(None, [*common, f"output_dir={straight}"]))
    a = load_file(str(straight / "student" / "model.safetensors"))
    b = load_file(str(out / "student" / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), "the resumed student differs"
    left = [p for p in out.rglob("*") if fsutil.PARTIAL.match(p.name) or p.name == fsutil.LOCK_NAME]
    assert left == [], f"left behind: {left} after kills {kills}"
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(STEPS + 1))
