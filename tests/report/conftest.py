"""Run folders written from code, shaped like `kdistill distill` + `kdistill eval --run` output."""
import json
import math

import pytest
import yaml


def metrics_rows(steps: int, eval_every: int, final_kl: float) -> list[dict]:
    rows = [{"step": 0, "loss": None, "eval_kl": 2.0, "eval_top1": 0.2, "eval_ppl": 40.0, "time": 0.0}]
    for step in range(1, steps + 1):
        kl = final_kl + (2.0 - final_kl) * math.exp(-step / 15) + 0.05 * math.sin(step)
        row = {"loss": kl + 0.1 * 3.0, "tokens": 256, "forward_kl": kl, "ce": 3.0 + kl, "step": step, "lr": 1e-3,
               "grad_norm": 1.0, "tokens_per_s": 900.0, "tokens_seen": 256 * step, "time": float(step)}
        if step % eval_every == 0 or step == steps:
            row.update(eval_kl=kl + 0.1, eval_top1=0.8 - 0.5 * kl / 2, eval_ppl=10 + 10 * kl)
        rows.append(row)
    return rows


def eval_result(parameters: int, ppl_student: float, retention=None) -> dict:
    result = {
        "heldout": {"kl": 0.4, "js": 0.09, "top1_agreement": 0.71, "top10_agreement": 0.62, "ppl_student": ppl_student,
                    "ppl_teacher": 10.0, "tokens": 2048, "kl_by_position": [1.2, 0.8, 0.5] + [0.4] * 29,
                    "kl_quantiles": {"p50": 0.3, "p90": 0.9, "p99": 2.1, "max": 4.0}},
        "teacher": {"parameters": 1_000_000, "size_on_disk_mb": 4.0, "tokens_per_s": 100.0, "ttft_ms": 20.0,
                    "peak_rss_mb": 500.0, "model_rss_mb": 40.0},
        "student": {"parameters": parameters, "size_on_disk_mb": 4.0 * parameters / 1e6, "tokens_per_s": 250.0,
                    "ttft_ms": 8.0, "peak_rss_mb": 480.0, "model_rss_mb": 10.0},
        "compression": 1_000_000 / parameters, "size_ratio": 1e6 / parameters, "speedup": 2.5, "ttft_speedup": 2.5,
        "memory_ratio": 4.0, "prompts": ["Once upon a time", "The king said <b>"],
        "completions": {"teacher": ["there was a fox.", "that the gates\nwould open."],
                        "student": ["there was a <b>fox</b> | ok", "the gates."]},
        "heldout_start": {"kl": 2.0, "top1_agreement": 0.2}}
    if retention is not None:
        result["benchmarks"] = {"tiny_mc": {"kind": "multiple_choice", "metric": "acc", "n": 4,
                                            "teacher": {"acc": 0.5, "acc_norm": 0.75},
                                            "student": {"acc": 0.5 * retention, "acc_norm": 0.5},
                                            "retention": retention}}
        result["retention"] = retention
    return result


@pytest.fixture
def make_run(tmp_path):
    """make_run(name, parameters, ppl_student, retention=None, steps=60, with_eval=True) -> run folder."""

    def make(name, parameters=250_000, ppl_student=12.0, retention=None, steps=60, with_eval=True):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        config = {"teacher": {"model": "tiny-teacher"}, "student": {"kind": "llama", "num_layers": 2},
                  "train": {"max_steps": steps}, "loss": {"terms": [{"kind": "forward_kl", "weight": 1.0},
                                                                      {"kind": "ce", "weight": 0.1}]}}
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        rows = metrics_rows(steps, 10, final_kl=0.4)
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if with_eval:
            (run / "eval.json").write_text(json.dumps(eval_result(parameters, ppl_student, retention)))
        return run

    return make
