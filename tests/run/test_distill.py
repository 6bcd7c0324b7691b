"""End to end on a tiny teacher built in code: distill, artefacts, kill -9 and resume, bad inputs."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from kdistill.base.errors import ConfigError, KdistillError
from kdistill.base.outputs import RUN_MARKER
from kdistill.config.schema import load_config
from kdistill.run.distill import distill

ROOT = Path(__file__).parents[2]
FAST = ["train.seq_len=32", "train.batch_size=4", "train.threads=1", "data.generate.num_samples=16",
        "data.generate.max_new_tokens=24", "student.num_layers=1", "eval.max_new_tokens=4",
        "eval.measure_speed=false"]


def _cfg(teacher_dir, out, *extra):
    return load_config(None, [f"teacher.model={teacher_dir}", f"output_dir={out}", *FAST, *extra])


def test_distill_writes_a_loadable_student_and_numbers(teacher_dir, tmp_path):
    out = tmp_path / "run"
    result = distill(_cfg(teacher_dir, out, "train.max_steps=4", "train.checkpoint_every=2",
                          "train.keep_checkpoints=1", "train.eval_every=2", "eval.measure_speed=true"))
    model = AutoModelForCausalLM.from_pretrained(out / "student")
    tok = AutoTokenizer.from_pretrained(out / "student")
    assert model.__class__.__name__ == "LlamaForCausalLM" and model.config.tie_word_embeddings
    assert model.generate(**tok("Once upon", return_tensors="pt"), max_new_tokens=3).shape[1] > 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert all("loss" in r for r in rows) and "eval_kl" in rows[2]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000004"]
    saved = json.loads((out / "eval.json").read_text())
    for key in ("kl", "top1_agreement", "ppl_student", "ppl_teacher"):
        assert key in saved["heldout"]
    assert saved["student"]["parameters"] < saved["teacher"]["parameters"]
    assert saved["student"]["tokens_per_s"] > 0 and saved["teacher"]["peak_rss_mb"] > 0
    assert len(saved["completions"]["student"]) == 3 and result["compression"] > 1
    assert load_config(out / "config.yaml").train.max_steps == 4
    phases = saved["phases"]  # where the wait went, in the order the stages ran
    assert list(phases) == ["teacher", "data", "student", "step 0 evaluation", "training", "evaluation", "speed"]
    assert all(v >= 0 for v in phases.values()) and phases["training"] > 0
    assert "phase training:" in (out / "kdistill.log").read_text()


def _run_cli(args, **kw):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "kdistill", "distill", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_kill_and_resume_gives_the_same_student(teacher_dir, tmp_path):
    common = [f"teacher.model={teacher_dir}", *FAST, "train.max_steps=40", "train.checkpoint_every=4",
              "train.eval_every=1000"]
    straight = _run_cli([*common, f"output_dir={tmp_path / 'a'}"])
    assert straight.wait(timeout=300) == 0, straight.stdout.read()

    run = _run_cli([*common, f"output_dir={tmp_path / 'b'}"])
    ckpts = tmp_path / "b" / "checkpoints"
    deadline = time.time() + 200
    while not (ckpts.is_dir() and any(p.name == "step-000008" for p in ckpts.iterdir())):
        assert run.poll() is None, run.stdout.read()
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    assert not list(ckpts.glob("step-000040")), "killed too late to test resume"
    assert not list((tmp_path / "b").glob("student"))
    again = _run_cli([*common, f"output_dir={tmp_path / 'b'}"])
    assert again.wait(timeout=60) != 0 and "--resume" in again.stdout.read()
    resumed = _run_cli([*common, f"output_dir={tmp_path / 'b'}", "--resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    a = load_file(str(tmp_path / "a" / "student" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "student" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(41))


def test_output_dir_with_a_run_is_refused(teacher_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / RUN_MARKER).write_text("{}\n")
    (out / "eval.json").write_text("{}\n")  # a finished run: worth keeping
    with pytest.raises(ConfigError, match="already holds a run.*--resume.*--overwrite"):
        distill(_cfg(teacher_dir, out, "train.max_steps=1"))
    assert sorted(p.name for p in out.iterdir()) == [RUN_MARKER, "eval.json"]
    assert (out / "eval.json").read_text() == "{}\n"
    with pytest.raises(ConfigError, match="no checkpoint that verifies"):
        distill(_cfg(teacher_dir, out, "train.max_steps=1"), resume=True)


def test_a_run_killed_before_its_first_checkpoint_starts_again(teacher_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / RUN_MARKER).write_text("{}\n")  # what a run killed before step 1 leaves
    (out / "config.yaml").write_text("{}\n")
    (out / "metrics.jsonl").write_text('{"step": 0, "loss": null}\n')
    distill(_cfg(teacher_dir, out, "train.max_steps=1"))
    assert "stopped before its first checkpoint" in capsys.readouterr().out
    fresh = tmp_path / "fresh"
    distill(_cfg(teacher_dir, fresh, "train.max_steps=1"), resume=True)  # --resume with nothing yet: step 0
    assert "no checkpoint yet" in capsys.readouterr().out and (fresh / "student").is_dir()


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(teacher_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    from kdistill.train import loop

    real = loop.train_step
    calls = {"n": 0}

    def poisoned(student, *args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            with torch.no_grad():
                next(student.parameters()).fill_(float("nan"))
        return real(student, *args, **kw)

    monkeypatch.setattr(loop, "train_step", poisoned)
    with pytest.raises(KdistillError, match="last good checkpoint is kept"):
        distill(_cfg(teacher_dir, out, "train.max_steps=5", "train.checkpoint_every=2"))
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000002"]
    state = load_file(str(out / "checkpoints" / "step-000002" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in state.values())


@pytest.mark.parametrize("override, message", [
    ("teacher.model=/no/such/teacher", "does not exist"),
    ("train.seq_len=4096", "max_position_embeddings=128"),
])
def test_bad_inputs_get_clear_errors(teacher_dir, tmp_path, override, message):
    with pytest.raises(KdistillError, match=message):
        distill(_cfg(teacher_dir, tmp_path / "run", "train.max_steps=1", override))


def test_cli_prints_errors_without_traceback(teacher_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": broken\n')
    proc = _run_cli([f"teacher.model={teacher_dir}", f"output_dir={tmp_path / 'o'}", f"data.path={bad}", *FAST])
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 2
    assert "bad.jsonl, line 2" in out and "Traceback" not in out


@pytest.mark.parametrize("term", [
    "{kind: forward_kl, temperature: 2.0}", "{kind: reverse_kl}", "{kind: bidirectional_kl}",
    "{kind: jsd, beta: 0.3}", "{kind: skew_forward_kl, alpha: 0.2}", "{kind: skew_reverse_kl}", "{kind: tvd}",
    "{kind: selective, top_k: 8, entropy_threshold: 0.1}",
    "{kind: forward_kl, temperature: {schedule: entropy, confident: 2.0, uncertain: 1.0}}",
    "{kind: ce, label_smoothing: 0.1, weight: {schedule: cosine, start: 1.0, end: 0.1}}",
])
def test_every_loss_kind_runs_from_config(teacher_dir, tmp_path, term):
    out = tmp_path / "run"
    distill(_cfg(teacher_dir, out, "train.max_steps=2", f"loss.terms=[{term}]", "eval.max_batches=1"))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss"] is None or r["loss"] == r["loss"] for r in rows) and rows[-1]["step"] == 2


def test_speeds_are_measured_after_the_models_are_freed(teacher_dir, tmp_path, monkeypatch):
    """A speed subprocess's memory adds to its parent's: the run lets go of its teacher and student first."""
    import weakref

    import kdistill.run.distill as run_module

    held, seen = {}, {}
    finish = run_module.finish

    def watched_finish(cfg, run, student, source, *rest):
        held["student"], held["source"] = weakref.ref(student), weakref.ref(source)
        held["teacher"] = weakref.ref(source.model)
        return finish(cfg, run, student, source, *rest)

    def fake_speeds(result, folders, *args):
        seen.update({name: ref() is None for name, ref in held.items()}, folders=sorted(folders))
        for name in folders:
            result[name].update(tokens_per_s=1.0)
        return result

    monkeypatch.setattr(run_module, "finish", watched_finish)
    monkeypatch.setattr(run_module, "measure_speeds", fake_speeds)
    result = distill(_cfg(teacher_dir, tmp_path / "run", "train.max_steps=1", "eval.measure_speed=true"))
    assert seen == {"student": True, "source": True, "teacher": True, "folders": ["student", "teacher"]}
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["student"]["tokens_per_s"] == 1.0
    assert result["teacher"]["tokens_per_s"] == 1.0
