"""One output rule for every command that writes: nothing replaced without --force, never an input or a run."""
import subprocess
from pathlib import Path
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


def test_the_real_command_refuses_with_exit_2(tmp_path):
    """One case through a real process: the exit status and the one line a shell sees."""
    make_run(tmp_path / "run")
    (tmp_path / "run" / "student" / "config.json").write_text("{}")
    before = _tree(tmp_path)
    done = _kdistill("export", "--model", "run/student", "--format", "int8", "--out", "run/student", "--force",
                     cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "error: --out" in done.stderr and "Traceback" not in done.stderr
    assert _tree(tmp_path) == before


def _layout(root):
    """A run, another run, a user's file and folder, a data file, a task file: what the table writes over."""
    import shutil

    make_run(root / "run")
    (root / "run" / "student" / "config.json").write_text("{}")
    (root / "run" / "eval.json").write_text('{"heldout": {}}\n')
    make_run(root / "other")
    (root / "taken.yaml").write_text("mine\n")
    (root / "taken").mkdir()
    (root / "taken" / "notes.txt").write_text("my notes\n")
    (root / "data").mkdir()
    (root / "data" / "notes.txt").write_text("Once upon a time there was a fox.\n" * 20)
    shutil.copy(Path(__file__).parents[1] / "fixtures" / "tasks" / "tiny_mc.jsonl", root / "mc.jsonl")


EVERY_OUT = [  # (what, argv, the refusal's words): every command that writes, each --out it takes
    ("config cp over a file", ["config", "cp", "demo", "taken.yaml"], "FILE taken.yaml exists"),
    ("config cp over the run's config", ["config", "cp", "demo", "run/config.yaml", "--force"],
     "the run's own config.yaml"),
    ("config cp over the shipped file", ["config", "cp", "demo", "SHIPPED", "--force"], "is the input"),
    ("report over a user's folder", ["report", "run", "--out", "taken"], "--out taken exists"),
    ("report over the run's student", ["report", "run", "--out", "run/student", "--force"],
     "the run's own student"),
    ("report over another run", ["report", "run", "--out", "other", "--force"], "is the run folder"),
    ("report over a folder of runs", ["report", "run", "--out", ".", "--force"], "holds the run folder"),
    ("map-layers over a user's folder", ["map-layers", "--teacher", "default", "--student", "run/student",
                                         "--out", "taken"], "--out taken exists"),
    ("map-layers inside its student", ["map-layers", "--teacher", "default", "--student", "run/student",
                                       "--out", "run/student/map", "--force"], "is inside the input"),
    ("map-layers over a run", ["map-layers", "--teacher", "default", "--student", "run/student", "--out", "other",
                               "--force"], "is the run folder"),
    ("eval over a user's file", ["eval", "--student", "run/student", "--teacher", "default", "--out", "taken.yaml"],
     "--out taken.yaml exists"),
    ("eval inside its student", ["eval", "--student", "run/student", "--teacher", "default", "--out",
                                 "run/student/e.json", "--force"], "is inside the input"),
    ("eval over another run's eval.json", ["eval", "--student", "run/student", "--teacher", "default", "--out",
                                           "other/eval.json", "--force"], "the run's own eval.json"),
    ("eval's lm-eval folder over a user's folder", ["eval", "--student", "run/student", "--teacher", "default",
                                                    "--tasks", "mc.jsonl", "--lm-eval-dir", "taken"],
     "--lm-eval-dir taken exists"),
    ("cache into a run", ["cache", "cache.out=run", "data.path=data/notes.txt", "--overwrite"], "is the run folder"),
    ("cache into a folder of runs", ["cache", "cache.out=.", "data.path=data/notes.txt", "--overwrite"],
     "cache.out . holds"),
    ("cache over its data", ["cache", "cache.out=data", "data.path=data/notes.txt", "--overwrite"],
     "holds the input data/notes.txt (data.path)"),
    ("distill inside its teacher", ["distill", "teacher.model=run/student", "output_dir=run/student/out"],
     "is inside teacher.model=run/student"),
    ("distill over its data's run", ["distill", "data.path=run/eval.json", "output_dir=run", "--overwrite"],
     "data.path=run/eval.json is inside output_dir run/eval.json"),
    ("export over the run", ["export", "--model", "run/student", "--format", "int8", "--out", "run", "--force"],
     "--out run holds the input run/student"),
    ("export inside its model", ["export", "--model", "run/student", "--format", "gguf", "--out",
                                 "run/student/x.gguf", "--force"], "is inside the input"),
    ("design over a file", ["design", "--teacher", "default", "--params", "30M", "--out", "taken.yaml"],
     "--out taken.yaml exists"),
    ("design over the run's config", ["design", "--teacher", "default", "--params", "30M", "--out",
                                      "run/config.yaml", "--force"], "the run's own config.yaml"),
]


@pytest.mark.parametrize("what,argv,refusal", EVERY_OUT, ids=[c[0] for c in EVERY_OUT])
def test_every_out_follows_the_rule(tmp_path, monkeypatch, capsys, what, argv, refusal):
    """Each command refuses before any model loads, exit 2, one line naming the key, everything as it was."""
    from kdistill.commands import cli
    from kdistill.commands.config import find_shipped

    _layout(tmp_path)
    monkeypatch.chdir(tmp_path)
    argv = [str(find_shipped("demo")) if a == "SHIPPED" else a for a in argv]
    before, shipped = _tree(tmp_path), find_shipped("demo").read_bytes()
    status = cli.main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    assert refusal in err and "Traceback" not in err, err
    assert _tree(tmp_path) == before
    assert find_shipped("demo").read_bytes() == shipped


def test_a_command_refreshes_only_its_own_folder(tmp_path):
    from kdistill.base.outputs import mark_own

    out = tmp_path / "map"
    out.mkdir()
    (out / "layer_map.json").write_text("{}")
    mark_own(out, "map-layers")
    assert check_output(out, False, own="map-layers") == out.resolve()  # its own: refreshed without --force
    with pytest.raises(ConfigError, match="exists"):
        check_output(out, False, own="report")  # another command's folder
    (out / "notes.txt").write_text("mine")  # a file the user added makes the folder theirs
    with pytest.raises(ConfigError, match="is not only what `kdistill map-layers` wrote"):
        check_output(out, False, own="map-layers")
    assert check_output(out, True, own="map-layers") == out.resolve()
