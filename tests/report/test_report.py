"""`kdistill report`: the quality-size analysis by hand, the page's content, run-folder errors, the CLI."""
import base64
import re

import pytest

from kdistill.base.errors import ConfigError, DataError
from kdistill.commands.cli import main
from kdistill.report import tradeoff
from kdistill.report.build import build_report, default_out
from kdistill.report.plots import smooth
from kdistill.report.runs import load_run, read_metrics, term_keys
from kdistill.report.sections import versus

PNG = b"\x89PNG\r\n\x1a\n"


def _pt(name, compression, retention):
    return {"name": name, "compression": compression, "retention": retention, "parameters": None}


def test_pareto_and_recommendation_by_hand():
    pts = [_pt("a", 2, 0.95), _pt("b", 4, 0.91), _pt("c", 8, 0.80), _pt("d", 3, 0.90)]
    assert tradeoff.pareto(pts) == ["a", "b", "c"]  # d: b is smaller (4 > 3) and better (0.91 > 0.90)
    advice = tradeoff.recommend(pts, 0.9)
    assert advice["pick"]["name"] == "b"  # the most compressed of a, b, d (all >= 0.9)
    assert "Recommended: b" in advice["text"] and "4.00x" in advice["text"] and "3 of 4 runs" in advice["text"]
    none = tradeoff.recommend(pts, 0.99)
    assert none["pick"] is None and "the best is a with 95.0% at 2.00x" in none["text"]
    assert tradeoff.recommend([], 0.9)["pick"] is None


def test_retention_source_is_benchmarks_only_when_every_run_has_them():
    with_bench = {"retention": 0.8, "heldout": {"ppl_teacher": 10.0, "ppl_student": 12.5}}
    without = {"heldout": {"ppl_teacher": 10.0, "ppl_student": 12.5}}
    assert tradeoff.pick_source([with_bench, with_bench]) == "benchmarks"
    assert tradeoff.pick_source([with_bench, without]) == "perplexity"
    assert tradeoff.retention_of(without, "perplexity") == pytest.approx(0.8)  # 10 / 12.5
    assert tradeoff.retention_of(with_bench, "benchmarks") == 0.8


def test_metrics_reading_and_run_folder_errors(tmp_path, make_run):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 2, "loss": 1.0, "forward_kl": 0.5}\n{"step": 1, "loss": 2.0, "ce": 3}\n{"step": 3, "lo')
    rows = read_metrics(path)  # the cut-off last row (a kill mid-write) is skipped; rows come back by step
    assert [r["step"] for r in rows] == [1, 2] and term_keys(rows) == ["ce", "forward_kl"]
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(DataError, match="m.jsonl, line 2"):
        read_metrics(path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither metrics.jsonl nor eval.json"):
        load_run(tmp_path / "empty")
    with pytest.raises(DataError, match="no such folder"):
        load_run(tmp_path / "missing")
    with pytest.raises(ConfigError, match="--min-retention"):
        build_report([make_run("a")], tmp_path / "out", min_retention=90)
    assert smooth([1.0, 1.0, 1.0]) == pytest.approx([1.0, 1.0, 1.0])  # bias-corrected from the first point
    assert versus(2.0, "faster") == "2.00x faster" and versus(0.8, "faster") == "1.25x slower"


def test_report_of_several_runs_has_every_section(make_run, tmp_path):
    runs = [make_run("small", 100_000, 16.0, retention=0.7), make_run("medium", 250_000, 11.0, retention=0.95),
            make_run("large", 500_000, 10.5, retention=0.98), make_run("training", with_eval=False, steps=30)]
    paths = build_report(runs, tmp_path / "out", min_retention=0.9)
    page = open(paths["html"]).read()
    markdown = open(paths["markdown"]).read()
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 5 and all(base64.b64decode(i).startswith(PNG) for i in images)
    assert not re.search(r'(src|href)="(?!data:)', page) and "<link" not in page  # nothing outside the page
    for text in ("Overview", "Quality vs size", "Training", "Run medium", "Teacher vs student", "Benchmarks",
                 "Seed prompts, side by side", "No eval.json yet"):
        assert text in page and text in markdown
    # medium is the smallest student that keeps 90%: 4x compression, retention 95%
    assert "Recommended: medium" in page and "4.00x fewer parameters, task retention 95.0%" in markdown
    assert "Mean task retention (student / teacher task score, tasks where the teacher beats the baseline)" in page
    assert "there was a &lt;b&gt;fox&lt;/b&gt; | ok" in page and "<b>fox" not in page  # escaped
    assert "there was a <b>fox</b> \\| ok" in markdown
    for name in ("loss_kl.png", "heldout.png", "optimiser.png", "kl_position.png", "tradeoff.png"):
        assert f"]({name})" in markdown and (tmp_path / "out" / name).read_bytes().startswith(PNG)


def test_cli_report_writes_next_to_the_runs(make_run, capsys):
    a, b = make_run("a", 200_000, 12.0), make_run("b", 400_000, 10.8)
    assert main(["report", str(a), str(b)]) == 0
    assert "report.html (self-contained)" in capsys.readouterr().out
    out = default_out([a, b])
    assert out == a.parent / "report" and (out / "report.html").is_file() and (out / "report.md").is_file()
    page = (out / "report.html").read_text()
    # no benchmarks: retention = teacher / student perplexity; a: 10/12 = 83% at 5x, b: 10/10.8 = 92.6% at 2.5x
    assert "Perplexity ratio (teacher perplexity / student perplexity" in page and "Recommended: b" in page
    assert "92.6%" in page
    assert default_out([a]) == a / "report"
    assert main(["report", str(a.parent / "nothing")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_a_report_is_refreshed_but_nothing_else_is_replaced(make_run, capsys):
    """Its own earlier report is rewritten without --force; a file the user put there makes it theirs."""
    a = make_run("a", 200_000, 12.0)
    assert main(["report", str(a)]) == 0
    first = (a / "report" / "report.html").stat().st_mtime_ns
    assert main(["report", str(a)]) == 0  # refreshed: the folder is the report's own
    assert (a / "report" / "report.html").stat().st_mtime_ns >= first
    (a / "report" / "my-notes.txt").write_text("mine")
    assert main(["report", str(a)]) == 2
    assert "--out (default)" in capsys.readouterr().err and (a / "report" / "my-notes.txt").read_text() == "mine"
    assert main(["report", str(a), "--force"]) == 0
    assert sorted(p.name for p in (a / "report").iterdir() if not p.suffix == ".png") == [
        ".kdistill-output", "report.html", "report.md"]
    assert not [p for p in a.iterdir() if p.name.startswith(".report")]  # nothing left beside it
