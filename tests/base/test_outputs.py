"""One output rule for every command that writes: nothing replaced without --force, never an input or a run."""
import subprocess
import sys

import pytest

from kdistill.base.errors import ConfigError
from kdistill.base.outputs import check_output, is_run_folder


def make_run(folder):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("output_dir: x\n")
    (folder / "metrics.jsonl").write_text("{}\n")
    (folder / "student").mkdir()
    return folder


CASES = [  # (name, layout, out, inputs, force, refusal or None)
    ("new path", {}, "new", [], False, None),
    ("an existing file", {"f.yaml": "x"}, "f.yaml", [], False, "exists; pass --force"),
    ("an existing file, forced", {"f.yaml": "x"}, "f.yaml", [], True, None),
    ("the input itself, forced", {"model/w": "x"}, "model", ["model"], True, "is the input"),
    ("inside the input, forced", {"model/w": "x"}, "model/q", ["model"], True, "is inside the input"),
    ("a folder holding the input, forced", {"a/model/w": "x"}, "a", ["a/model"], True, "holds the input"),
    ("a run folder, forced", "run", "run", [], True, "is the run folder"),
    ("a folder holding a run, forced", "run", ".", [], True, "holds the run folder"),
    ("the run's own student, forced", "run", "run/student", [], True, "the run's own student"),
    ("the run's own eval.json", "run", "run/eval.json", [], True, "the run's own eval.json"),
    ("a new name beside the student", "run", "run/student-int8", ["run/student"], False, None),
    ("a user's folder with only a config.yaml, forced", {"mine/config.yaml": "x", "mine/notes.txt": "y"},
     "mine", [], True, None),
]


@pytest.mark.parametrize("name,layout,out,inputs,force,refusal", CASES, ids=[c[0] for c in CASES])
def test_the_output_rule(tmp_path, monkeypatch, name, layout, out, inputs, force, refusal):
    monkeypatch.chdir(tmp_path)
    if layout == "run":
        make_run(tmp_path / "run")
    else:
        for rel, text in layout.items():
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_text(text)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    if refusal is None:
        assert check_output(out, force, inputs) == (tmp_path / out).resolve()
    else:
        with pytest.raises(ConfigError, match=refusal) as e:
            check_output(out, force, inputs)
        assert "--out" in str(e.value)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before  # only checks


def test_a_run_folder_is_what_kdistill_wrote(tmp_path):
    assert is_run_folder(make_run(tmp_path / "run"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.yaml").write_text("teacher: {model: default}\n")
    assert not is_run_folder(tmp_path / "mine")
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / ".kdistill-run").write_text("{}")  # the marker is written before anything else
    assert is_run_folder(tmp_path / "fresh")


def _kdistill(*argv, cwd):
    return subprocess.run([sys.executable, "-m", "kdistill", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in root.rglob("*")}


@pytest.mark.parametrize("argv", [
    ["export", "--model", "run/student", "--format", "int8", "--out", "run", "--force"],
    ["export", "--model", "run/student", "--format", "int8", "--out", "run/student", "--force"],
    ["export", "--model", "run/student", "--format", "gguf", "--out", "run/student/x.gguf", "--force"],
    ["design", "--teacher", "default", "--params", "30M", "--out", "taken.yaml"],
    ["design", "--teacher", "default", "--params", "30M", "--out", "run/config.yaml", "--force"],
], ids=["export over the run", "export over its model", "export inside its model", "design over a file",
        "design over the run's config"])
def test_commands_refuse_and_leave_everything_as_it_was(tmp_path, argv):
    make_run(tmp_path / "run")
    (tmp_path / "run" / "student" / "config.json").write_text("{}")
    (tmp_path / "taken.yaml").write_text("mine\n")
    before = _tree(tmp_path)
    done = _kdistill(*argv, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "error: --out" in done.stderr and "Traceback" not in done.stderr
    assert _tree(tmp_path) == before
