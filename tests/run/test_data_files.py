"""Resume means the same data: every checkpoint records the data files' sha256, `--resume` refuses a file
that changed (naming it) unless `--accept-changed-data`, which is recorded in resumes.jsonl."""
import contextlib
import json
import shutil

import pytest

from kdistill.base.errors import DataError
from kdistill.commands.cli import main
from kdistill.config.schema import load_config
from kdistill.run.data_files import changes, data_files
from kdistill.run.distill import distill

FAST = ["train.seq_len=32", "train.batch_size=4", "train.threads=1", "student.num_layers=1", "eval.max_new_tokens=4",
        "eval.measure_speed=false", "eval.prompts=[Once]", "student.layer_selection=first_last"]
TEXT = "".join(f"The fox number {i} ran past the old mill and jumped over the river at dawn.\n" for i in range(60))


def _args(teacher_dir, out, data, *extra):
    return [f"teacher.model={teacher_dir}", f"output_dir={out}", f"data.path={data}", *FAST, *extra]


@pytest.fixture(scope="module")
def trained(teacher_dir, tmp_path_factory):
    """A 2-step run on notes.txt with a checkpoint at each step, both named relative to the folder that holds
    them, so a copy is the same run (read-only: copy before changing it)."""
    root = tmp_path_factory.mktemp("on_file")
    (root / "notes.txt").write_text(TEXT)
    with contextlib.chdir(root):
        distill(load_config(None, _args(teacher_dir, "run", "notes.txt", "train.max_steps=2",
                                        "train.checkpoint_every=1")))
    return root


@pytest.fixture
def copied(trained, tmp_path, monkeypatch):
    """A copy of the trained folder, made the working folder."""
    shutil.copytree(trained, tmp_path / "w")
    monkeypatch.chdir(tmp_path / "w")
    return tmp_path / "w"


def _listing(folder):
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def test_every_checkpoint_records_the_data_files(trained):
    state = json.loads((trained / "run" / "checkpoints" / "step-000002" / "trainer_state.json").read_text())
    assert list(state["data_files"]) == ["data.path"]
    assert list(state["data_files"]["data.path"]) == ["notes.txt"]


def test_resume_refuses_a_rewritten_data_file_naming_it(teacher_dir, copied, capsys):
    notes, out = "notes.txt", copied / "run"
    argv = ["distill", *_args(teacher_dir, "run", notes, "train.max_steps=3", "train.checkpoint_every=1"), "--resume"]
    (copied / notes).write_text(TEXT.replace("fox", "cat"))  # same name, other text
    before = _listing(out)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"data.path: {notes} changed (sha256 " in err and "--accept-changed-data" in err, err
    assert "Traceback" not in err and _listing(out) == before
    assert main([*argv, "--accept-changed-data"]) == 0  # on purpose: continues, and says so
    assert f"--resume: data changed since step-000002: data.path: {notes} changed" in capsys.readouterr().out
    change = json.loads((out / "resumes.jsonl").read_text().splitlines()[-1])
    assert change["checkpoint"] == "step-000002" and change["data_changed"][0].startswith(f"data.path: {notes} changed")


def test_unchanged_data_resumes_without_a_word(teacher_dir, copied, capsys):
    distill(load_config(None, _args(teacher_dir, "run", "notes.txt", "train.max_steps=3",
                                    "train.checkpoint_every=1")), resume=True)
    assert "data changed" not in capsys.readouterr().out
    assert "data_changed" not in (copied / "run" / "resumes.jsonl").read_text()  # only max_steps changed


def test_changes_name_the_key_and_each_file(tmp_path):
    (tmp_path / "d").mkdir()
    for name in ("a.txt", "b.jsonl", "skip.bin"):
        (tmp_path / "d" / name).write_text(name)
    cfg = load_config(None, [f"data.path={tmp_path / 'd'}"])
    saved = data_files(cfg)
    assert sorted(saved["data.path"]) == [str(tmp_path / "d" / "a.txt"), str(tmp_path / "d" / "b.jsonl")]
    (tmp_path / "d" / "a.txt").write_text("other")
    (tmp_path / "d" / "b.jsonl").unlink()
    (tmp_path / "d" / "c.csv").write_text("text\nx\n")
    assert [line.split(" (")[0] for line in changes(saved, data_files(cfg))] == [
        f"data.path: {tmp_path / 'd' / 'a.txt'} changed", f"data.path: {tmp_path / 'd' / 'b.jsonl'} is gone",
        f"data.path: {tmp_path / 'd' / 'c.csv'} is new"]
    assert data_files(load_config(None, ["data.path=roneneldan/TinyStories"])) == {}  # a hub name: the config says it
