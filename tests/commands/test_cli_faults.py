"""The CLI's one answer for every fault: one line on stderr, exit 2 (user/disk), 130 (Ctrl-C) or 1 (a bug,
traceback in $KDISTILL_CACHE/logs), and the raw traceback only with -v."""
import errno
import os
from pathlib import Path

import pytest

from kdistill.base.errors import ConfigError
from kdistill.commands import cli


def _run(monkeypatch, capsys, fault, *flags):
    """Run `kdistill [flags] report RUN` with the report command replaced by `fault`; (status, stderr)."""
    def command(args):
        fault()

    monkeypatch.setattr("kdistill.commands.report.main", command)
    status = cli.main([*flags, "report", "runs/x"])
    return status, capsys.readouterr().err


def _raise(e):
    def fault():
        raise e
    return fault


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    return err.strip()


def test_a_user_error_is_one_line_and_exit_2(monkeypatch, capsys):
    status, err = _run(monkeypatch, capsys, _raise(ConfigError("train.lr must be positive\nset it > 0")))
    assert status == 2 and _one_line(err) == "kdistill report: error: train.lr must be positive set it > 0"


@pytest.mark.parametrize("e, expected", [
    (OSError(errno.ENOSPC, "No space left on device", "runs/x/student/model.safetensors"),
     "disk full while writing runs/x/student/model.safetensors: free space or choose another output_dir"),
    (PermissionError(errno.EACCES, "Permission denied", "/srv/runs/x"), "permission denied for /srv/runs/x"),
    (PermissionError(errno.EPERM, "Operation not permitted", "/srv/runs/y"), "permission denied for /srv/runs/y"),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/x"), "/mnt/ro/x is on a read-only file system"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "runs/x/eval.json"),
     "runs/x/eval.json is a folder where a file is needed"),
])
def test_disk_errors_are_one_line_naming_the_path(monkeypatch, capsys, e, expected):
    status, err = _run(monkeypatch, capsys, _raise(e))
    assert status == 2 and expected in _one_line(err) and err.startswith("kdistill report: error: ")


def test_a_real_full_disk_is_one_line(monkeypatch, capsys):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")

    def fault():
        with open("/dev/full", "wb") as f:
            f.write(b"x" * 10)

    status, err = _run(monkeypatch, capsys, fault)
    assert status == 2 and "disk full while writing" in _one_line(err)


def test_a_file_where_a_folder_is_needed_is_named(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "runs"
    blocker.write_text("not a folder")
    status, err = _run(monkeypatch, capsys, lambda: (blocker / "x" / "student").mkdir(parents=True))
    assert status == 2 and f"{blocker} is a file where a folder is needed" in _one_line(err)
    status, err = _run(monkeypatch, capsys, lambda: blocker.mkdir(parents=True, exist_ok=True))
    assert status == 2 and f"{blocker} already exists as a file where a folder is needed" in _one_line(err)
    status, err = _run(monkeypatch, capsys, lambda: list(blocker.iterdir()))
    assert status == 2 and f"{blocker} is a file where a folder is needed:" in _one_line(err)


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    status, err = _run(monkeypatch, capsys, _raise(KeyboardInterrupt()))
    assert status == 130 and _one_line(err) == "kdistill report: interrupted"


def _logged_bug():
    raise ValueError("boom\nsecond line")


def test_a_bug_is_one_line_exit_1_and_its_traceback_is_logged(tmp_path, monkeypatch, capsys):
    status, err = _run(monkeypatch, capsys, _logged_bug)
    line = _one_line(err)
    assert status == 1 and line.startswith("kdistill report: internal error: ValueError: boom second line; ")
    assert line.endswith("; rerun with -v to see it")
    log = Path(line.split("the traceback is in ")[1].split(";")[0])
    assert log.parent == tmp_path / "cache" / "logs" and log.name.startswith("report-")
    text = log.read_text()
    assert "kdistill report runs/x" in text and "Traceback" in text and "_logged_bug" in text


def test_an_oserror_that_is_not_the_disks_is_a_bug(monkeypatch, capsys):
    status, err = _run(monkeypatch, capsys, _raise(OSError("model.bin is not a valid checkpoint")))
    assert status == 1 and "internal error: OSError: model.bin is not a valid checkpoint" in _one_line(err)


def test_verbose_shows_the_raw_traceback(monkeypatch, capsys):
    status, err = _run(monkeypatch, capsys, _logged_bug, "-v")
    assert status == 1 and "Traceback" in err and "_logged_bug" in err
    assert err.strip().splitlines()[-1].startswith("kdistill report: internal error: ValueError")
    status, err = _run(monkeypatch, capsys, _raise(ConfigError("bad key")), "-v")
    assert status == 2 and "Traceback" in err and err.strip().endswith("kdistill report: error: bad key")


def test_a_log_that_cannot_be_written_leaves_the_traceback_on_stderr(tmp_path, monkeypatch, capsys):
    (tmp_path / "cache").write_text("a file, so no logs/ folder can be made in it")
    status, err = _run(monkeypatch, capsys, _logged_bug)
    assert status == 1 and "Traceback" in err and "_logged_bug" in err
    assert "the traceback is above (no log: " in err.strip().splitlines()[-1]
