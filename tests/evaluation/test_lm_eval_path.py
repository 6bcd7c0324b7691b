"""A student folder runs unchanged under EleutherAI's lm-eval, offline, on kdistill's task YAMLs, and
lm-eval's log-likelihoods, accuracies and greedy completions equal kdistill's own scorer's.

lm-eval's `TaskManager(include_defaults=False)` skips indexing its thousands of built-in YAMLs (40 s
here); the `lm_eval` command line does the same work as `simple_evaluate` with `--include_path`.
"""
import importlib.util
from pathlib import Path

import pytest
import torch
from helpers import tiny_llama, tiny_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from kdistill.evaluation.lm_eval_tasks import lm_eval_command, write_task_yamls
from kdistill.evaluation.tasks import run_tasks

FIXTURES = Path(__file__).parents[1] / "fixtures" / "tasks"
TASKS = [FIXTURES / "tiny_mc.jsonl", FIXTURES / "tiny_gen.jsonl"]
MAX_NEW = 6

if importlib.util.find_spec("lm_eval") is None:  # installed but broken must fail, not skip
    pytest.skip("lm-eval is not installed: pip install lm-eval (kdistill's [test] extra)", allow_module_level=True)


def test_student_folder_runs_under_lm_eval_and_agrees_with_kdistill(tmp_path, monkeypatch):
    import datasets
    import lm_eval
    from lm_eval.tasks import TaskManager

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    student = tmp_path / "student"
    tok = tiny_tokenizer()
    tiny_llama(len(tok), seed=3).save_pretrained(student)
    tok.save_pretrained(student)

    names = write_task_yamls(TASKS, tmp_path / "yaml", MAX_NEW)
    assert names == ["kd_tiny_mc", "kd_tiny_gen"]
    command = lm_eval_command(str(student), tmp_path / "yaml", names).split()  # run what `eval` prints
    option = {flag: command[i + 1] for i, flag in enumerate(command) if flag.startswith("--")}
    assert option["--model_args"] == f"pretrained={student},dtype=float32" and option["--device"] == "cpu"
    out = lm_eval.simple_evaluate(
        model=option["--model"], model_args=option["--model_args"], device=option["--device"],
        tasks=option["--tasks"].split(","), batch_size=int(option["--batch_size"]),
        task_manager=TaskManager(include_path=option["--include_path"], include_defaults=False), log_samples=True)

    model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32).eval()
    ours = run_tasks({"student": model}, AutoTokenizer.from_pretrained(student), TASKS, "cpu",
                     max_new_tokens=MAX_NEW)
    mc, gen = ours["tiny_mc"]["student"], ours["tiny_gen"]["student"]
    samples = sorted(out["samples"]["kd_tiny_mc"], key=lambda s: s["doc_id"])
    assert len(samples) == 4
    for sample, detail in zip(samples, mc["details"]):
        theirs = [resp[0][0] for resp in sample["resps"]]
        assert theirs == pytest.approx(detail["loglikelihoods"], abs=1e-3)
    assert out["results"]["kd_tiny_mc"]["acc,none"] == pytest.approx(mc["acc"])
    assert out["results"]["kd_tiny_mc"]["acc_norm,none"] == pytest.approx(mc["acc_norm"])

    gen_samples = sorted(out["samples"]["kd_tiny_gen"], key=lambda s: s["doc_id"])
    assert [s["filtered_resps"][0] for s in gen_samples] == gen["completions"] and any(gen["completions"])
    assert float(out["results"]["kd_tiny_gen"]["exact_match,none"]) == pytest.approx(gen["exact_match"])
