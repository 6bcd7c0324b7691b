"""Tracking: the TensorBoard event file of a run holds every series metrics.jsonl logged, W&B runs
offline, and a tracker whose package is missing is refused before anything starts."""
import importlib.util
import json

import pytest

from kdistill.base.errors import ConfigError
from kdistill.config.schema import load_config
from kdistill.run.distill import distill

FAST = ["train.seq_len=32", "train.batch_size=4", "train.threads=1", "data.generate.num_samples=16",
        "data.generate.max_new_tokens=24", "student.num_layers=1", "eval.max_new_tokens=2",
        "eval.measure_speed=false", "eval.prompts=[Once]", "train.max_steps=3", "train.eval_every=2",
        "student.layer_selection=first_last"]


def _series(rows):
    return {k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k not in ("step", "time")}


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_the_event_file_holds_every_logged_series(teacher_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    distill(load_config(None, [f"teacher.model={teacher_dir}", f"output_dir={out}", *FAST,
                               "train.tracker=[jsonl, tensorboard]",
                               "loss.terms=[{kind: forward_kl, temperature: {schedule: linear, start: 2, end: 1}},"
                               " {kind: ce, weight: 0.1}]"]))
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines() if json.loads(r)["step"] > 0]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert _series(rows) <= tags, _series(rows) - tags
    assert {"lr", "grad_norm", "tokens_per_s", "forward_kl", "ce", "weight/ce", "temperature/forward_kl",
            "eval_kl"} <= tags
    temps = [e.value for e in events.Scalars("temperature/forward_kl")]
    assert temps == pytest.approx([r["temperature/forward_kl"] for r in rows]) and temps[0] > temps[-1]


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed")
def test_wandb_runs_offline(teacher_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    distill(load_config(None, [f"teacher.model={teacher_dir}", f"output_dir={out}", *FAST, "train.tracker=[wandb]"]))
    runs = list((out / "wandb").glob("offline-run-*"))
    assert runs and any(runs[0].rglob("*.wandb"))


@pytest.mark.skipif(importlib.util.find_spec("aim") is None,
                    reason="aim is not installed here (`pip install 'kdistill[aim]'`; it needs a manylinux wheel "
                           "of aimrocks for this Python)")
def test_the_aim_repo_holds_every_logged_series(teacher_dir, tmp_path):
    from aim import Repo, Run
    from aim.sdk.index_manager import RepoIndexManager

    out = tmp_path / "run"
    distill(load_config(None, [f"teacher.model={teacher_dir}", f"output_dir={out}", *FAST, "train.tracker=aim"]))
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    repo = Repo(str(out / "aim"))
    hashes = repo.list_all_runs()
    assert len(hashes) == 1 and RepoIndexManager.get_index_manager(repo).index(hashes[0])  # what `aim up` shows
    run = Run(run_hash=hashes[0], repo=str(out / "aim"), read_only=True)
    assert run["hparams"]["train"]["max_steps"] == 3
    tracked = {seq.name: dict(seq.dataframe()[["step", "value"]].values.tolist()) for seq in run.metrics()}
    assert not any(name.startswith("__system__") for name in tracked)  # no background sampling thread
    assert _series(r for r in rows if r["step"] > 0) <= set(tracked)
    assert tracked["loss"] == pytest.approx({r["step"]: r["loss"] for r in rows if r.get("loss") is not None})


def test_a_missing_tracker_package_names_the_extra(teacher_dir, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "aim" else real(name, *a))
    with pytest.raises(ConfigError, match="train.tracker=aim needs the `aim` package"):
        distill(load_config(None, [f"teacher.model={teacher_dir}", f"output_dir={tmp_path / 'run'}", *FAST,
                                   "train.tracker=[aim]"]))
    with pytest.raises(ConfigError, match="unknown tracker 'mlflw'"):
        distill(load_config(None, [f"teacher.model={teacher_dir}", f"output_dir={tmp_path / 'run'}", *FAST,
                                   "train.tracker=[mlflw]"]))
    assert not (tmp_path / "run").exists()
