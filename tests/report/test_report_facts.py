"""The report says what each number is: named retentions, log axes over decades, run facts, when each
measurement was taken, no stale speed-up, benchmark baselines, and the too-little-data warning."""
import json

from kdistill.report import facts, plots
from kdistill.report.build import build_report
from kdistill.report.runs import load_run
from kdistill.report.sections import benchmark_table, comparison_table, run_section


def _rows(train_kl: float, held_kl: float, steps: int = 40) -> list[dict]:
    rows = [{"step": 0, "loss": None, "eval_kl": 5.0, "time": 1000.0}]
    for s in range(1, steps + 1):
        rows.append({"step": s, "loss": train_kl + 0.2, "forward_kl": train_kl, "lr": 1e-3, "grad_norm": 2.0,
                     "tokens_seen": 800 * s, "time": 1000.0 + 10 * s, **({"eval_kl": held_kl} if s % 20 == 0 else {})})
    return rows


def _run(rows, config=None, e=None, path="runs/x") -> dict:
    return {"name": "x", "path": path, "metrics": rows, "eval": e,
            "config": config or {"train": {"batch_size": 8, "grad_accum": 1, "lr": 1e-3}, "loss": {"terms": [
                {"kind": "forward_kl", "temperature": 1.0}]}}}


def test_heldout_kl_far_above_training_kl_warns_with_the_fix():
    e = {"data_sizes": {"train_examples": 71, "heldout_examples": 8}}
    warning = facts.data_warning(_run(_rows(1.1, 2.8), e=e))
    assert warning.startswith("Held-out KL 2.80 is 2.5x the training KL 1.10 at step 40")
    assert "each of its 71 training examples seen about 4.5 times in 40 steps" in warning  # 40 x 8 / 71
    assert "data.generate.num_samples" in warning and "train.max_steps" in warning
    assert facts.data_warning(_run(_rows(1.1, 1.3), e=e)) is None  # within 1.5x
    assert facts.data_warning(_run(_rows(0.1, 0.3), e=e)) is None  # 3x, but only 0.2 nats apart
    hot = {"train": {"batch_size": 8}, "loss": {"terms": [{"kind": "forward_kl", "temperature": 2.0}]}}
    assert facts.data_warning(_run(_rows(1.1, 2.8), config=hot)) is None  # KL at T=2 is not comparable


def test_run_facts_from_eval_json_metrics_and_the_log(tmp_path):
    (tmp_path / "kdistill.log").write_text("2026-01-01 10:00:00 INFO device cpu, teacher dtype torch.float32, 2 threads\n"
                                           "2026-01-01 10:00:05 INFO data: 71 training and 8 held-out examples of up to 128 tokens\n")
    run = _run(_rows(1.0, 1.1), path=str(tmp_path))
    rows = dict(facts.fact_rows(run))
    assert rows["wall time"] == "training 6 min 40 s"  # rows at 1000 s ... 1400 s; no measured end for the whole run
    assert rows["tokens seen"] == "32,000 in 40 steps" and rows["examples"] == "71 training, 8 held-out"
    assert rows["hardware"] == "cpu, 2 threads (from kdistill.log)"
    assert rows["reproduce"] == f"kdistill distill --config {tmp_path / 'config.yaml'}"
    assert rows["optimiser"].startswith("AdamW, lr 0.001")
    import datetime
    end = datetime.datetime(2026, 1, 1, 10, 9, 30).astimezone(datetime.timezone.utc).isoformat()
    run["eval"] = {"measured": {"heldout": {"time": end, "command": "kdistill eval --run R"}},
                   "data_sizes": {"train_examples": 70, "heldout_examples": 9}, "heldout": {"tokens": 900},
                   "hardware": {"device": "cpu", "cpu": "Xeon", "cpu_cores": 2, "torch_threads": 1, "torch": "2.9",
                                "transformers": "5.0", "python": "3.11", "platform": "Linux"}}
    rows = dict(facts.fact_rows(run))
    assert rows["wall time"] == "training 6 min 40 s · run 9 min 30 s"  # first log line to the last measurement
    assert rows["examples"] == "70 training, 9 held-out (900 held-out tokens)"
    assert rows["hardware"].startswith("cpu (Xeon, 2 cores), 1 torch threads; torch 2.9")
    assert facts.measured_rows(run) == [["heldout", end, "kdistill eval --run R"]]


def test_axes_go_logarithmic_only_over_decades():
    fig, (ax,) = plots._figure(4, 3)
    plots.log_if_decades(ax, [900.0, 70.0, 58.0])
    assert ax.get_yscale() == "log"
    fig, (ax,) = plots._figure(4, 3)
    plots.log_if_decades(ax, [40.0, 12.0, 10.0])
    assert ax.get_yscale() == "linear"
    plots.log_if_decades(ax, [100.0, 0.0, 1.0])  # a zero has no logarithm
    assert ax.get_yscale() == "linear"


def test_no_speed_up_without_the_speeds_it_came_from_and_named_ratios(make_run, tmp_path):
    run = make_run("stale")
    e = json.loads((run / "eval.json").read_text())
    for side in ("teacher", "student"):  # an eval.json left by an older partial rerun: speed-up, no speeds
        for key in ("tokens_per_s", "ttft_ms", "peak_rss_mb", "model_rss_mb"):
            e[side].pop(key)
    (run / "eval.json").write_text(json.dumps(e))
    table = comparison_table(e)[0][2]
    assert [r[0] for r in table] == ["held-out perplexity", "parameters", "size on disk (MB)"]
    paths = build_report([run], tmp_path / "out")
    md = open(paths["markdown"]).read()
    overview = md.split("## Overview")[1].split("\n\n")[1].splitlines()
    assert overview[0].endswith("| perplexity ratio | task retention | speed-up |")
    assert overview[2].endswith("| 83.3% | - | - |")  # 10 / 12; no tasks; no speeds, so no speed-up
    assert "2.50x" not in md and "faster" not in md
    assert "Top-10 overlap: the mean share of the student's 10 most likely next tokens" in md
    assert "top-10 overlap, the mean share of the student's 10 most likely tokens among the teacher's 10" in md


def test_benchmarks_show_standard_errors_baselines_and_na(make_run):
    bench = {"navigate": {"kind": "multiple_choice", "metric": "acc", "n": 40, "chance": 0.5, "majority": 0.55,
                          "baseline": 0.55, "teacher": {"acc": 0.6, "acc_stderr": 0.078, "acc_norm": 0.9},
                          "student": {"acc": 0.5, "acc_stderr": 0.08, "acc_norm": 0.45}, "retention": None,
                          "retention_note": "n/a: teacher 60.0% is not above the baseline 55.0% + 2 standard errors"}}
    rows = benchmark_table(bench)[0][2]
    assert rows[0] == ["navigate", "multiple choice", "acc", 40, "60.0% ± 7.8", "50.0% ± 8.0",
                       "55.0% (chance 50.0%, majority 55.0%)", "n/a"]
    # acc_norm clears the bar (90% > 55% + 2 sqrt(.55 x .45 / 40) = 70.7%): its ratio counts
    assert rows[1][-1] == "50.0%"
    assert "navigate: n/a: teacher 60.0% is not above" in benchmark_table(bench)[1][1]


def test_completions_caption_states_the_saved_settings(make_run):
    run = load_run(make_run("settings"))
    run["eval"]["completion_settings"] = {"do_sample": False, "max_new_tokens": 32}
    text = " ".join(b[1] for b in run_section(run) if b[0] == "p")
    assert "Completions: greedy, 32 new tokens, no repetition penalty (the student's generation_config.json)" in text
    del run["eval"]["completion_settings"]
    text = " ".join(b[1] for b in run_section(run) if b[0] == "p")
    assert "older kdistill with a repetition penalty of 1.2" in text
