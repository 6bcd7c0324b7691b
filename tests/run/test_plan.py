"""`kdistill distill --dry-run`: checks the config, prints the plan, loads no model and writes nothing."""
import pytest

import kdistill.models.teacher
from kdistill.base.outputs import RUN_MARKER
from kdistill.commands import cli

FAST = ["train.seq_len=32", "train.batch_size=4", "train.max_steps=3", "student.num_layers=1"]


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a dry run loaded a model")

    monkeypatch.setattr(kdistill.models.teacher, "load_teacher", refuse)


def test_dry_run_prints_the_plan_and_touches_nothing(teacher_dir, tmp_path, capsys, no_model):
    out = tmp_path / "run"
    assert cli.main(["distill", "--dry-run", f"teacher.model={teacher_dir}", f"output_dir={out}", *FAST]) == 0
    plan = capsys.readouterr().out
    assert not out.exists()
    assert f"teacher: model {teacher_dir} (folder" in plan
    assert "student: LLaMA, preset auto (num_layers 1, hidden_size 32, num_heads 4" in plan
    assert "data: teacher-generated" in plan and "forward_kl" in plan
    assert "3 steps x 4 sequences x 32 tokens = 384 tokens" in plan
    assert f"output: {out} (new folder)" in plan


def test_dry_run_fails_as_the_run_would(teacher_dir, tmp_path, capsys, no_model):
    assert cli.main(["distill", "--dry-run", "teacher.model=/no/such/teacher", f"output_dir={tmp_path / 'r'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    held = tmp_path / "held"
    held.mkdir()
    (held / "eval.json").write_text("{}")
    (held / RUN_MARKER).write_text("{}")  # kdistill wrote it: a run
    argv = ["distill", "--dry-run", f"teacher.model={teacher_dir}", f"output_dir={held}"]
    assert cli.main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert cli.main(argv + ["--overwrite"]) == 0
    assert "(replaced:" in capsys.readouterr().out
    assert sorted(p.name for p in held.iterdir()) == [RUN_MARKER, "eval.json"]


def test_dry_run_refuses_as_the_run_folder_would(teacher_dir, tmp_path, capsys, no_model):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("train: {max_steps: 3}\n")  # the user's own, not a run
    argv = ["distill", "--dry-run", f"teacher.model={teacher_dir}", f"output_dir={mine}", *FAST]
    for flags in ([], ["--overwrite"]):
        assert cli.main(argv + flags) == 2
        assert "holds config.yaml, which kdistill did not write" in capsys.readouterr().err
    assert cli.main(argv + ["--resume", "--overwrite"]) == 2
    assert "--resume and --overwrite together" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml"]
