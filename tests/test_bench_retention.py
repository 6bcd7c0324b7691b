"""scripts/bench_retention.py turns benchmark questions shipped in lm-eval into task files eval reads."""
import subprocess
import sys
from pathlib import Path

import pytest

from kdistill.data.task_files import read_task

ROOT = Path(__file__).resolve().parents[1]


def test_the_retention_tasks_are_task_files_with_their_answers(tmp_path):
    pytest.importorskip("lm_eval", reason="the questions ship inside lm-eval (a test extra)")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_retention.py"), "--write-tasks",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    mmlu, mc, gen = (read_task(tmp_path / f"{n}.jsonl") for n in ("mmlu_dev", "bbh_mc", "bbh_gen"))
    assert mmlu["kind"] == mc["kind"] == "multiple_choice" and gen["kind"] == "generative"
    assert len(mmlu["records"]) > 250 and len(mc["records"]) > 50 and gen["records"]
    first = mmlu["records"][0]  # abstract algebra's first worked example: its answer is (C)
    assert first["choices"] == ["A", "B", "C", "D"] and first["answer"] == 2
    assert first["context"].endswith("D. False, True\nAnswer:")
    assert all(r["answer"] in r["choices"] for r in mc["records"] if isinstance(r["answer"], str))
