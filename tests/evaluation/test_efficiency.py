"""Efficiency numbers: parameters, bytes on disk, tokens/s and time to first token under a fake clock,
the teacher/student ratios, and one real measurement in a subprocess."""
import itertools
from types import SimpleNamespace

import pytest
from helpers import save_tiny_teacher, tiny_llama, tiny_tokenizer

from kdistill.evaluation import speed
from kdistill.evaluation.compare import format_table, ratios
from kdistill.models.heads import count_parameters


def llama_parameters(vocab: int, layers: int, d: int = 32, ffn: int = 64, kv: int = 16) -> int:
    """Tied LLaMA: embeddings + per layer (q, o: d·d; k, v: d·kv; gate, up, down: d·ffn; 2 norms) + final norm."""
    return vocab * d + layers * (2 * d * d + 2 * d * kv + 3 * d * ffn + 2 * d) + d


def test_parameter_count_matches_the_formula():
    vocab = len(tiny_tokenizer())
    for layers in (1, 2):
        model = tiny_llama(vocab, num_hidden_layers=layers)  # hidden 32, ffn 64, 4 heads, 2 kv heads of 8
        assert count_parameters(model) == llama_parameters(vocab, layers)


def test_size_on_disk_counts_weight_files_only(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "extra.bin").write_bytes(b"x" * 24)
    (tmp_path / "config.json").write_text("{}" * 50)
    assert speed.folder_bytes(tmp_path) == 1024
    assert speed.folder_bytes(tmp_path / "model.safetensors") == 1000


def test_tokens_per_second_and_time_to_first_token_under_a_fake_clock(tmp_path, monkeypatch):
    model_dir = save_tiny_teacher(tmp_path / "m")
    ticks = itertools.count(0.0, 0.5)  # every timed interval lasts exactly 0.5 s
    monkeypatch.setattr(speed, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    m = speed.measure(model_dir, ["Once upon a time", "The king said"], max_new_tokens=4, threads=1)
    assert m["generated_tokens"] == 8  # exactly max_new_tokens per prompt
    assert m["tokens_per_s"] == pytest.approx(8 / (2 * 0.5))
    assert m["ttft_ms"] == pytest.approx(500.0)
    assert m["peak_rss_mb"] >= m["baseline_rss_mb"] > 0
    assert m["model_rss_mb"] == pytest.approx(m["peak_rss_mb"] - m["baseline_rss_mb"])


def test_ratios_are_teacher_over_student_where_bigger_is_better():
    teacher = {"parameters": 400, "size_on_disk_mb": 8.0, "tokens_per_s": 20.0, "ttft_ms": 90.0, "model_rss_mb": 60.0}
    student = {"parameters": 100, "size_on_disk_mb": 2.5, "tokens_per_s": 50.0, "ttft_ms": 30.0, "model_rss_mb": 0.0}
    r = ratios(teacher, student)
    assert r == {"compression": 4.0, "size_ratio": 3.2, "speedup": 2.5, "ttft_speedup": 3.0}  # no memory: /0
    result = {"heldout": {"kl": 0.5, "js": 0.1, "top1_agreement": 0.75, "top10_agreement": 0.8, "ppl_student": 9.0,
                          "ppl_teacher": 8.0, "tokens": 12, "kl_quantiles": {"p50": 0.4, "max": 2.0}},
              "teacher": teacher, "student": student, "prompts": ["Hi"],
              "completions": {"teacher": ["there"], "student": ["you"]}, **r,
              "benchmarks": {"arc": {"kind": "multiple_choice", "metric": "acc", "n": 4, "baseline": 0.25,
                                     "teacher": {"acc": 0.5, "acc_stderr": 0.289}, "student": {"acc": 0.25},
                                     "retention": 0.5},
                             "gen": {"kind": "generative", "metric": "exact_match", "n": 3, "baseline": 0.0,
                                     "teacher": {"exact_match": 0.0}, "student": {"exact_match": 0.0},
                                     "retention": None, "retention_note": "n/a: teacher 0.0% is not above"}},
              "task_retention": 0.5, "task_retention_tasks": ["arc"], "task_retention_excluded": {"gen": "n/a"}}
    table = format_table(result)
    for text in ("compression: 4.00x", "speed-up: 2.50x", "top-10 agreement: 80.0%", "JS: 0.100",
                 "arc acc (n=4)", "50.0% ±28.9", "  gen: n/a: teacher 0.0% is not above",
                 "mean task retention (student / teacher score): 50.0% over 1 task; 1 left out", "p50 0.400"):
        assert text in table


def test_measurement_in_a_subprocess_reports_every_number(tmp_path, monkeypatch):
    model_dir = save_tiny_teacher(tmp_path / "m")
    m = speed.measure_in_subprocess(model_dir, ["Once upon a time"], max_new_tokens=3, threads=1)
    assert "error" not in m, m
    assert m["generated_tokens"] == 3 and m["tokens_per_s"] > 0 and m["ttft_ms"] > 0 and m["device"] == "cpu"
    failed = SimpleNamespace(returncode=1, stdout="", stderr="Traceback ...\nOSError: no model in /x\n")
    monkeypatch.setattr(speed.subprocess, "run", lambda *a, **k: failed)
    assert speed.measure_in_subprocess("/x", ["x"]) == {"error": "OSError: no model in /x"}
