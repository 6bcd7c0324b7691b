"""`kdistill map-layers` refuses model folders it cannot read with one line naming the folder (exit 2)."""
import shutil

import pytest

from kdistill.commands.cli import main


@pytest.mark.parametrize("side", ["--student", "--teacher"])
def test_a_folder_without_weights_is_named(teacher_dir, tmp_path, capsys, side):
    empty = shutil.copytree(teacher_dir, tmp_path / "no_weights")
    (empty / "model.safetensors").unlink()
    folders = {"--teacher": teacher_dir, "--student": teacher_dir, side: str(empty)}
    code = main(["map-layers", "--teacher", folders["--teacher"], "--student", folders["--student"],
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("kdistill map-layers: error: ") and f"{empty}: no weights" in lines[0]
    assert not (tmp_path / "out").exists()
