"""`kdistill eval` end to end on a tiny run folder: table on screen, JSON, benchmarks, lm-eval YAMLs, errors."""
import json
from pathlib import Path

import pytest
from helpers import CORPUS, save_tiny_teacher, tiny_llama, tiny_tokenizer

from kdistill.commands.cli import main
from kdistill.config.schema import dump, load_config

FIXTURES = Path(__file__).parents[1] / "fixtures" / "tasks"
TASKS = [str(FIXTURES / "tiny_mc.jsonl"), str(FIXTURES / "tiny_gen.jsonl")]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("KDISTILL_THREADS", "1")  # `kdistill eval` would take every core


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished-looking run: config.yaml, a 1-layer student and an eval.json from `distill`."""
    root = tmp_path_factory.mktemp("evalcmd")
    teacher = save_tiny_teacher(root / "teacher")
    (root / "notes.txt").write_text("\n".join(CORPUS))
    run = root / "run"
    tok = tiny_tokenizer()
    tiny_llama(len(tok), seed=1, num_hidden_layers=1).save_pretrained(run / "student")
    tok.save_pretrained(run / "student")
    cfg = load_config(None, [f"teacher.model={teacher}", f"data.path={root / 'notes.txt'}", f"output_dir={run}",
                             "train.seq_len=32", "train.batch_size=2", "eval.max_new_tokens=3"])
    (run / "config.yaml").write_text(dump(cfg))
    (run / "eval.json").write_text(json.dumps({"heldout_start": {"kl": 1.5, "top1_agreement": 0.1}}))
    return run


def test_eval_run_prints_the_table_and_merges_eval_json(run_dir, capsys):
    assert main(["eval", "--run", str(run_dir), "--tasks", *TASKS, "--no-speed", "--max-new-tokens", "3",
                 "--lm-eval-dir", str(run_dir / "lm_tasks")]) == 0
    out = capsys.readouterr().out
    for text in ("perplexity (held-out)", "top-10 agreement", "JS:", "per-token KL: p50", "compression:",
                 "tiny_mc acc (n=4)", "tiny_gen exact_match (n=3)", "prompt: 'Once upon a time'",
                 f"wrote {run_dir / 'eval.json'}", "lm_eval --model hf --model_args pretrained="):
        assert text in out
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["heldout_start"] == {"kl": 1.5, "top1_agreement": 0.1}  # kept from distill
    held = result["heldout"]
    assert held["tokens"] > 0 and 0 <= held["top10_agreement"] <= 1 and held["js"] <= held["kl"] + 1e-6
    assert 0 < len(held["kl_by_position"]) <= 32 and set(held["kl_quantiles"]) == {"p50", "p90", "p99", "max"}
    assert result["compression"] == pytest.approx(result["teacher"]["parameters"] / result["student"]["parameters"])
    bench = result["benchmarks"]
    assert bench["tiny_mc"]["teacher"]["n"] == 4 and len(bench["tiny_gen"]["student"]["completions"]) == 3
    assert sorted(p.name for p in (run_dir / "lm_tasks").iterdir()) == [".kdistill-output", "kd_tiny_gen.yaml",
                                                                       "kd_tiny_mc.yaml"]


def test_eval_student_teacher_against_itself_has_full_retention(run_dir, tmp_path, capsys):
    teacher = str(run_dir.parent / "teacher")
    out = tmp_path / "self.json"
    assert main(["eval", "--student", teacher, "--teacher", teacher, "--data", str(run_dir.parent / "notes.txt"),
                 "--seq-len", "32", "--batches", "1", "--tasks", TASKS[0], "--no-speed", "--max-new-tokens", "2",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["heldout"]["kl"] == pytest.approx(0.0, abs=1e-5)
    assert result["heldout"]["top1_agreement"] == 1.0 and result["heldout"]["top10_agreement"] == 1.0
    assert result["compression"] == 1.0
    mc = result["benchmarks"]["tiny_mc"]
    assert mc["teacher"]["acc"] == mc["student"]["acc"]
    assert mc["retention"] in (1.0, None)  # None only if the random teacher scores 0


@pytest.mark.parametrize("args, message", [
    (["eval", "--student", "x"], "give --run RUN_DIR, or both --student DIR and --teacher SPEC"),
    (["eval", "--run", "/no/such/run"], "no config.yaml there"),
])
def test_eval_errors_are_one_line(args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_a_bad_task_file_fails_before_loading_models(run_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "a", "choices": ["b"], "answer": 0}\n')
    assert main(["eval", "--run", str(run_dir), "--tasks", str(bad), "--no-speed"]) == 2
    assert "bad.jsonl, line 1" in capsys.readouterr().err
