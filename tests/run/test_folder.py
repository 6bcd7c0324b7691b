"""The run folder: --resume refuses a changed meaning and records safe changes, --overwrite keeps the old
run until the new one has a checkpoint, a failed fresh run leaves the folder as it was, Ctrl-C checkpoints.
A folder is a run by kdistill's marker, never by file names: what the user put there is never touched."""
import json
import signal
import subprocess
from pathlib import Path

import pytest
from helpers import signal_a_run

import kdistill.run.distill as distill_module
from kdistill.base.errors import ConfigError, DataError
from kdistill.base.outputs import RUN_MARKER
from kdistill.config.schema import load_config
from kdistill.run.distill import distill

FAST = ["train.seq_len=32", "train.batch_size=4", "train.threads=1", "data.generate.num_samples=16",
        "data.generate.max_new_tokens=24", "student.num_layers=1", "eval.max_new_tokens=4",
        "eval.measure_speed=false", "eval.prompts=[Once]", "student.layer_selection=first_last"]


def _cfg(teacher_dir, out, *extra):
    return load_config(None, [f"teacher.model={teacher_dir}", f"output_dir={out}", *FAST, *extra])


def _listing(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def finished(teacher_dir, tmp_path_factory):
    """A run of 2 steps with a checkpoint at each step (read-only: copy before changing it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    distill(_cfg(teacher_dir, out, "train.max_steps=2", "train.checkpoint_every=1"))
    return out


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("change, key", [("train.batch_size=2", "train.batch_size"), ("train.lr=0.01", "train.lr"),
                                         ("student.num_layers=2", "student.num_layers"),
                                         ("loss.terms=[{kind: reverse_kl}]", "loss.terms")])
def test_resume_refuses_a_change_of_meaning_and_names_the_key(teacher_dir, finished, tmp_path, change, key):
    out = _copy(finished, tmp_path / "run")
    before = _listing(out)
    with pytest.raises(ConfigError, match=f"changes what the run.*{key}") as e:
        distill(_cfg(teacher_dir, out, "train.max_steps=3", "train.checkpoint_every=1", change), resume=True)
    assert "delete" not in str(e.value)
    assert _listing(out) == before  # nothing touched


def test_resume_allows_more_steps_and_records_the_change(teacher_dir, finished, tmp_path):
    out = _copy(finished, tmp_path / "run")
    distill(_cfg(teacher_dir, out, "train.max_steps=3", "train.checkpoint_every=1"), resume=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    change = json.loads((out / "resumes.jsonl").read_text().splitlines()[0])
    assert change["checkpoint"] == "step-000002" and change["changed"] == ["train.max_steps: 2 -> 3"]


def broken(*args, **kw):
    raise ConfigError("student: broken on purpose")


def _overwrite_fails_then_succeeds(teacher_dir, out, monkeypatch) -> None:
    """An --overwrite whose student fails leaves `out` byte for byte as it was; the same command then runs."""
    before = _listing(out)
    monkeypatch.setattr(distill_module, "build_student", broken)
    with pytest.raises(ConfigError, match="broken on purpose"):
        distill(_cfg(teacher_dir, out, "train.max_steps=1"), overwrite=True)
    assert _listing(out) == before  # the old run is back, byte for byte
    monkeypatch.undo()
    distill(_cfg(teacher_dir, out, "train.max_steps=1"), overwrite=True)


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(teacher_dir, finished, tmp_path,
                                                                         monkeypatch):
    out = _copy(finished, tmp_path / "run")
    _overwrite_fails_then_succeeds(teacher_dir, out, monkeypatch)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000001"]
    assert not (out / ".replaced").exists()


def test_a_fresh_run_that_fails_leaves_nothing_behind(teacher_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(distill_module, "build_student", broken)
    out = tmp_path / "new"
    with pytest.raises(ConfigError):
        distill(_cfg(teacher_dir, out, "train.max_steps=1"))
    assert not out.exists()  # the corrected command needs no --overwrite
    (tmp_path / "kept").mkdir()
    with pytest.raises(ConfigError):
        distill(_cfg(teacher_dir, tmp_path / "kept", "train.max_steps=1"))
    assert list((tmp_path / "kept").iterdir()) == []


def test_ctrl_c_stops_after_the_step_with_a_checkpoint(teacher_dir, tmp_path):
    out = tmp_path / "run"
    status, err, step = signal_a_run(teacher_dir, out, signal.SIGINT, FAST)
    assert status == 130, err  # the shell convention for SIGINT, after the checkpoint
    assert 1 <= step < 400
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"step-{step:06d}"]
    assert "--resume" in err.strip().splitlines()[-1] and "Traceback" not in err


@pytest.fixture
def small_disk(tmp_path):
    """A 160 KB tmpfs (root can mount one here): room for the config and metrics, not for a checkpoint."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}): needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_while_checkpointing_is_one_line_naming_the_path(teacher_dir, small_disk, capsys):
    from kdistill.commands.cli import main

    out = small_disk / "run"
    status = main(["distill", f"teacher.model={teacher_dir}", f"output_dir={out}", *FAST, "train.max_steps=1"])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # above it: progress bars of the steps that ran
    assert status == 2 and last.startswith("kdistill distill: error:") and "Traceback" not in err, err
    assert "disk full while writing" in last and str(out / "checkpoints") in last


def test_resume_drops_a_cut_last_metrics_line_and_says_so(teacher_dir, finished, tmp_path, capsys):
    out = _copy(finished, tmp_path / "run")
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 1.2, "forward_k')  # what a kill in the middle of a write leaves
    distill(_cfg(teacher_dir, out, "train.max_steps=3", "train.checkpoint_every=1"), resume=True)
    assert f"--resume: {out / 'metrics.jsonl'}, line 4: cut short" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]


def test_resume_refuses_a_broken_metrics_line_before_the_last_naming_it(teacher_dir, finished, tmp_path):
    out = _copy(finished, tmp_path / "run")
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    (out / "metrics.jsonl").write_text(lines[0] + '{"step": 1, "lo\n' + "".join(lines[1:]))
    before = _listing(out)
    with pytest.raises(DataError, match=rf"{out / 'metrics.jsonl'}, line 2: not valid JSON .*; .*delete that line"):
        distill(_cfg(teacher_dir, out, "train.max_steps=3", "train.checkpoint_every=1"), resume=True)
    assert _listing(out) == before


def test_resume_and_overwrite_together_are_refused(teacher_dir, finished, tmp_path, capsys):
    from kdistill.commands.cli import main

    out = _copy(finished, tmp_path / "run")
    before = _listing(out)
    argv = ["distill", f"teacher.model={teacher_dir}", f"output_dir={out}", *FAST, "--resume", "--overwrite"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--resume and --overwrite together" in err and "Traceback" not in err
    assert main([*argv, "--dry-run"]) == 2 and "--resume and --overwrite together" in capsys.readouterr().err
    assert _listing(out) == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_users_config_yaml_in_output_dir_is_refused_untouched(teacher_dir, tmp_path, capsys, overwrite):
    from kdistill.commands.cli import main

    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("train:\n  max_steps: 1\n")  # the config the user is running
    (out / "notes.txt").write_text("my notes\n")
    before = _listing(out)
    argv = ["distill", "--config", str(out / "config.yaml"), f"teacher.model={teacher_dir}", f"output_dir={out}", *FAST]
    assert main(argv + ["--overwrite"] * overwrite) == 2
    err = capsys.readouterr().err
    assert f"output_dir {out} holds config.yaml, which kdistill did not write" in err and "Traceback" not in err
    assert _listing(out) == before


def test_files_of_the_user_beside_a_run_are_never_moved_or_deleted(teacher_dir, finished, tmp_path, monkeypatch):
    out = _copy(finished, tmp_path / "run")
    (out / "notes.txt").write_text("my notes\n")
    (out / ".notes.txt.abcdefgh.tmp").write_text("looks like a leftover, is not kdistill's\n")
    _overwrite_fails_then_succeeds(teacher_dir, out, monkeypatch)
    assert (out / "notes.txt").read_text() == "my notes\n" and (out / ".notes.txt.abcdefgh.tmp").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000001"]


def test_overwrite_twice_keeps_the_replaced_run_until_a_checkpoint(teacher_dir, finished, tmp_path, monkeypatch):
    import kdistill.run.folder as folder_module

    out = _copy(finished, tmp_path / "run")
    before = _listing(out)

    undo = folder_module._undo
    monkeypatch.setattr(distill_module, "build_student", broken)
    monkeypatch.setattr(folder_module, "_undo", lambda run: None)  # as kill -9 leaves it: no cleanup
    with pytest.raises(ConfigError, match="broken on purpose"):
        distill(_cfg(teacher_dir, out, "train.max_steps=1"), overwrite=True)
    assert (out / ".replaced" / "checkpoints").is_dir()  # the first run, aside
    monkeypatch.setattr(folder_module, "_undo", undo)
    with pytest.raises(ConfigError, match="broken on purpose"):  # the second --overwrite fails too
        distill(_cfg(teacher_dir, out, "train.max_steps=1"), overwrite=True)
    assert _listing(out) == before


def test_a_non_run_folder_takes_a_run_beside_the_users_files_only_with_overwrite(teacher_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes\n")
    with pytest.raises(ConfigError, match="is not empty .* holds no kdistill run.*--overwrite"):
        distill(_cfg(teacher_dir, out, "train.max_steps=1"))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    distill(_cfg(teacher_dir, out, "train.max_steps=1"), overwrite=True)
    assert (out / "notes.txt").read_text() == "my notes\n" and (out / RUN_MARKER).is_file()


def test_a_run_from_before_the_marker_still_resumes(teacher_dir, finished, tmp_path):
    out = _copy(finished, tmp_path / "run")
    (out / RUN_MARKER).unlink()  # what a kdistill before the marker wrote: known by its verified checkpoints
    distill(_cfg(teacher_dir, out, "train.max_steps=3", "train.checkpoint_every=1"), resume=True)
    assert (out / RUN_MARKER).is_file() and (out / "checkpoints" / "step-000003").is_dir()


def test_a_key_added_since_the_checkpoint_counts_as_what_the_run_did():
    """A run from before data.pack existed read one record per row: resuming it packed would change its data."""
    from kdistill.config.schema import Config, to_dict
    from kdistill.run.folder import config_changes

    saved = to_dict(Config())
    saved["data"].pop("pack")
    saved["train"].pop("max_steps")  # an added key whose default is what runs did: no change
    unsafe, safe = config_changes(saved, to_dict(Config()))
    assert unsafe == ["data.pack: False -> 'auto'"] and safe == []
    current = to_dict(Config())
    current["data"]["pack"] = False
    assert config_changes(saved, current) == ([], [])
