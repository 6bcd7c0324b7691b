"""`kdistill bench step` times the teacher's forward, the student's step and the KD step, and prints the
KD step's share of the ceiling their times set."""
import re

from kdistill.commands.bench_step import report
from kdistill.commands.cli import main


def test_share_of_the_ceiling_is_the_parts_over_the_whole():
    text = report({"teacher forward": [1.0, 3.0, 1.0], "student step": [2.0, 2.0, 9.0], "KD step": [4.0, 4.0, 4.0]},
                  1024)
    assert "KD step: 0.750 of the ceiling" in text  # (1 + 2) / 4
    assert re.search(r"ceiling\s+3\.000\s+341", text)


def test_bench_step_runs_on_a_tiny_teacher(teacher_dir, capsys):
    assert main(["bench", "step", "--teacher", str(teacher_dir), "--layers", "1", "--batch", "2", "--seq", "16",
                 "--steps", "2", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    for part in ("teacher forward", "student step", "KD step", "ceiling"):
        assert re.search(rf"^{part}\s+\d+\.\d+\s+\d+", out, re.M), out
    share = float(re.search(r"KD step: ([\d.]+) of the ceiling", out).group(1))
    assert 0.2 < share < 5.0
