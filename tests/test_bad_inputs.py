"""Every bad input, through the CLI in-process: exit status 2, one line on stderr naming the problem, no
traceback, and the folder around the run holds exactly what it held before (names and bytes).

A row is (name, argv builder, expected substring). The builder gets the row's own folder `d` (it may
write the bad file there) and `teacher()`, which builds the tiny teacher only for the rows that need one.
"""
import hashlib
import json
import os
from pathlib import Path

import pytest

from kdistill.commands import cli

FAST = "train: {seq_len: 32, batch_size: 4, max_steps: 2, threads: 1}\nstudent: {num_layers: 1}\n" \
       "eval: {max_new_tokens: 4, measure_speed: false}\n"
LATIN1 = "caf\u00e9 cr\u00e8me br\u00fbl\u00e9e\n".encode("latin-1")


class OutputTouched(AssertionError):
    """The folder around the run changed although the input was refused."""


class NotOneLine(AssertionError):
    """stderr held more than the one line (e.g. the teacher's loading bar: it loaded before the check)."""


def _write(d: Path, name: str, data) -> str:
    path = d / name
    path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)
    return str(path)


def _config(d: Path, text: str = FAST) -> list[str]:
    return ["--config", _write(d, "c.yaml", text)]


def _distill(d: Path, teacher, *overrides) -> list[str]:
    return ["distill", *_config(d), f"teacher.model={teacher()}", f"output_dir={d / 'run'}", *overrides]


def _data(name: str, data):
    """A distill row whose data.path is the file `name` holding `data`."""
    return lambda d, teacher: _distill(d, teacher, f"data.path={_write(d, name, data)}")


def _parquet_list_column(d: Path, teacher) -> list[str]:
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": [["a", "b"]]}).to_parquet(str(d / "lists.parquet"))
    return _distill(d, teacher, f"data.path={d / 'lists.parquet'}")


def _output_dir_is_a_file(d: Path, teacher) -> list[str]:
    return ["distill", *_config(d), f"teacher.model={teacher()}", f"output_dir={_write(d, 'run', 'a file')}"]


def _previous_run(d: Path) -> Path:
    """A finished run in d/run (what --overwrite must not lose to a config that fails its checks)."""
    run = d / "run"
    (run / "student").mkdir(parents=True)
    (run / ".kdistill-run").write_text("{}")
    (run / "student" / "config.json").write_text("{}")
    (run / "eval.json").write_text('{"heldout": {"kl": 1.0}}')
    (run / "config.yaml").write_text("train: {max_steps: 2}\n")
    return run


def _overwrite(*overrides):
    def build(d: Path, teacher) -> list[str]:
        _previous_run(d)
        return [*_distill(d, teacher, *overrides), "--overwrite"]
    return build


def _teacher_folder(damage):
    """A distill row whose teacher is a copy of the tiny teacher with `damage(folder)` applied."""
    def build(d: Path, teacher) -> list[str]:
        import shutil

        folder = Path(shutil.copytree(teacher(), d / "teacher"))
        damage(folder)
        return _distill(d, lambda: folder)
    return build


def _truncate(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


def _pickle_only(folder: Path) -> None:
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")


def _remote_code(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))


ROWS = [
    # no model needed
    ("config typo key", lambda d, t: ["distill", *_config(d, "trian:\n  max_steps: 3\n")],
     "unknown config key 'trian'"),
    ("override typo key", lambda d, t: ["distill", "train.max_step=3"], "did you mean 'train.max_steps'"),
    ("bad YAML", lambda d, t: ["distill", *_config(d, "train: [1, 2\n")], "not valid YAML"),
    ("bad value type", lambda d, t: ["distill", *_config(d), "train.max_steps=abc"], "not a valid int"),
    ("bad value in YAML", lambda d, t: ["distill", *_config(d, "train:\n  lr: fast\n")], "not a valid float"),
    ("override without =", lambda d, t: ["distill", "train.max_steps"], "must look like key.path=value"),
    ("missing config file", lambda d, t: ["distill", "--config", str(d / "nope.yaml")], "does not exist"),
    ("report of a missing run", lambda d, t: ["report", str(d / "nope")], "no such folder"),
    ("eval of a missing run", lambda d, t: ["eval", "--run", str(d / "nope")], "no config.yaml there"),
    ("generate with a missing model", lambda d, t: ["generate", "--model", str(d / "nope"), "hi"], "no such folder"),
    ("inspect a missing cache", lambda d, t: ["cache", "--inspect", str(d / "nope")], "does not exist"),
    # a tiny teacher
    ("missing teacher path", lambda d, t: _distill(d, lambda: d / "no-teacher"), "does not exist"),
    ("--overwrite with a teacher typo", lambda d, t: [*_distill(d, lambda: d / "no-teacher"), "--overwrite"]
     if _previous_run(d) else [], "does not exist"),
    ("--overwrite with a bad loss term", _overwrite("loss.terms=[{kind: forward_kll}]"), "did you mean 'forward_kl'"),
    ("unknown loss term key", lambda d, t: _distill(d, t, "loss.terms=[{kind: jsd, bta: 0.5}]"), "bta: unknown key"),
    ("misspelt teacher.dtype", lambda d, t: _distill(d, t, "teacher.dtype=fp33"), "teacher.dtype"),
    ("cuda without CUDA", lambda d, t: _distill(d, t, "train.device=cuda"), "CUDA is not available"),
    ("missing task file", lambda d, t: _distill(d, t, f"eval.tasks=[{d / 'nope.jsonl'}]"), "does not exist"),
    ("unknown student preset", lambda d, t: _distill(d, t, "student.preset=tiniest"), "unknown preset"),
    ("truncated teacher weights", _teacher_folder(_truncate), "model.safetensors"),
    ("pickled teacher weights", _teacher_folder(_pickle_only), "teacher.allow_pickle"),
    ("teacher asks for remote code", _teacher_folder(_remote_code), "trust_remote_code"),
    ("output_dir is a file", _output_dir_is_a_file, "is a file"),
    ("missing data file", lambda d, t: _distill(d, t, f"data.path={d / 'nope.jsonl'}"), "does not exist"),
    ("latin-1 .txt", _data("notes.txt", b"fine\n" + LATIN1), "notes.txt: not UTF-8 at byte 8 (line 2)"),
    ("latin-1 .jsonl", _data("notes.jsonl", b'{"text": "' + LATIN1.strip() + b'"}\n'), "not UTF-8 at byte 13 (line 1)"),
    ("latin-1 .csv", _data("notes.csv", b"text\n" + LATIN1), "notes.csv: not UTF-8 at byte"),
    ("binary file", _data("model.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"), "is a binary file"),
    ("UTF-16 file", _data("notes.txt", "hello there\n".encode("utf-16")), "is UTF-16 text"),
    ("empty .jsonl", _data("empty.jsonl", b""), "holds no records"),
    ("blank .txt", _data("blank.txt", "\n  \n"), "holds no records"),
    ("empty JSON object", _data("empty.json", "{}"), "holds no records"),
    ("malformed JSONL line", _data("bad.jsonl", '{"text": "ok"}\n{"text": oops}\n'),
     "bad.jsonl, line 2: not valid JSON"),
    ("columnar JSON of unequal lengths", _data("cols.json", json.dumps({"instruction": ["a", "b"], "response": ["x"]})),
     "'instruction' has 2, 'response' has 1"),
    ("ragged CSV row", _data("t.csv", "text,label\na,1\nb,2,3\n"), "t.csv, line 3: 3 fields but the header has 2"),
    ("list in the text field", _data("t.jsonl", '{"text": [1, 2]}\n'), "t.jsonl, line 1: field 'text' holds a list"),
    ("parquet list column", _parquet_list_column, "lists.parquet, row 1: field 'text' holds a list"),
    ("number as response", _data("i.jsonl", '{"instruction": "Name a fruit.", "response": 7}\n'),
     "i.jsonl, line 1: field 'response' holds a number"),
    ("chat content not a string", _data("c.jsonl", json.dumps({"messages": [
        {"role": "user", "content": ["hi"]}, {"role": "assistant", "content": "hello"}]}) + "\n"),
     "field 'messages[0].content' holds a list"),
]


def _snapshot(root: Path) -> dict:
    """Every path under `root` -> the sha256 of its bytes ("dir" for a folder)."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(folder, name), root)] = "dir"
        for name in files:
            path = os.path.join(folder, name)
            out[os.path.relpath(path, root)] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return out


@pytest.mark.parametrize("name, argv, expected", [pytest.param(*row, id=row[0]) for row in ROWS])
def test_a_bad_input_is_one_line_exit_2_and_touches_nothing(name, argv, expected, tmp_path, request, capsys):
    d = tmp_path / "work"
    d.mkdir()
    args = [str(a) for a in argv(d, lambda: request.getfixturevalue("teacher_dir"))]
    before = _snapshot(tmp_path)
    capsys.readouterr()
    status = cli.main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert status == 2, err
    assert expected in err and f"kdistill {args[0]}: error: " in err, err
    after = _snapshot(tmp_path)
    if after != before:
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        raise OutputTouched(f"the folder changed: {changed}")
    if err.count("\n") != 1 or not err.startswith(f"kdistill {args[0]}: error: "):
        raise NotOneLine(err)
