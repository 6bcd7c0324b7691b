"""`--tasks` reads BIG-bench task.json and lm-eval task YAML as they are, and scores them like their JSONL.

The JSONL files beside the fixtures are the hand conversions: BIG-bench's query ("\\nQ: " + input + each
"\\n  choice: " + "\\nA: ") with the output prefix's trailing space moved into JSONL's " " + choice.
"""
import importlib.util
import json
from pathlib import Path

import pytest
from helpers import tiny_llama, tiny_tokenizer

from kdistill.base.errors import DataError
from kdistill.data.task_lm_eval import read_lm_eval_yaml
from kdistill.evaluation.lm_eval_tasks import lm_eval_command, write_task_yamls
from kdistill.evaluation.tasks import read_task, run_tasks

FIXTURES = Path(__file__).parents[1] / "fixtures" / "tasks"
LM_EVAL = FIXTURES / "lm_eval"


@pytest.fixture(scope="module")
def models():
    tok = tiny_tokenizer()
    return {"teacher": tiny_llama(len(tok), seed=5).eval(), "student": tiny_llama(len(tok), seed=6).eval()}, tok


def _same_scores(a: dict, b: dict) -> None:
    for side in ("teacher", "student"):
        x, y = dict(a[side]), dict(b[side])
        assert x.pop("completions", None) == y.pop("completions", None)
        x.pop("details", None), y.pop("details", None)
        assert x == pytest.approx(y, abs=1e-6)
        if "details" in a[side]:
            for p, q in zip(a[side]["details"], b[side]["details"]):
                assert p["loglikelihoods"] == pytest.approx(q["loglikelihoods"], abs=1e-5)
                assert (p["pick"], p["pick_norm"]) == (q["pick"], q["pick_norm"])
    for key in ("kind", "metric", "n", "chance", "majority", "baseline", "retention"):
        assert a[key] == pytest.approx(b[key]) if isinstance(a[key], float) else a[key] == b[key]


@pytest.mark.parametrize("name", ["bigbench_mc", "bigbench_gen"])
def test_bigbench_task_json_scores_like_its_jsonl_conversion(models, name):
    models, tok = models
    task = read_task(FIXTURES / name / "task.json")
    converted = read_task(FIXTURES / f"{name}.jsonl")
    assert task["format"] == "bigbench" and task["name"] == name
    texts = [(r.get("context", r.get("prompt")), r.get("choices"), r["answer"]) for r in converted["records"]]
    assert [(r.get("context", r.get("prompt")).rstrip(" "), r.get("choices"), r["answer"])
            for r in task["records"]] == texts  # the query BIG-bench builds, less the prefix's trailing space
    ours = run_tasks(models, tok, [FIXTURES / name / "task.json"], "cpu", max_new_tokens=4)[name]
    theirs = run_tasks(models, tok, [FIXTURES / f"{name}.jsonl"], "cpu", max_new_tokens=4)[name]
    _same_scores(ours, theirs)
    assert ours["format"] == "bigbench" and theirs["format"] == "jsonl"
    assert read_task(FIXTURES / name)["records"] == task["records"]  # the folder names the task.json in it


def test_bigbench_tied_top_scores_are_all_right_and_bad_files_are_named(tmp_path):
    path = tmp_path / "tie" / "task.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"examples": [{"input": "2+2", "target_scores": {"4": 1, "four": 1, "5": 0}}]}))
    task = read_task(path)
    assert task["name"] == "tie" and task["records"][0]["answers"] == [0, 1] and task["records"][0]["answer"] == 0
    for data, message in [({"examples": [{"input": "x", "target": "y"}, {"input": "z"}]}, "example 1: every example"),
                          ({"examples": []}, "non-empty list"), ({"subtasks": [{}], "examples": [{}]}, "subtasks"),
                          ([1, 2], "must be a BIG-bench task.json")]:
        path.write_text(json.dumps(data))
        with pytest.raises(DataError, match=message) as err:
            read_task(path)
        assert "task.json" in str(err.value)


def test_lm_eval_yaml_reads_columns_and_templates():
    qa, cloze = read_task(LM_EVAL / "tiny_qa.yaml"), read_task(LM_EVAL / "tiny_cloze.yaml")
    assert qa["format"] == "lm-eval" and qa["kind"] == "multiple_choice" and qa["delimiter"] == " "
    assert qa["records"][0] == {"context": "Question: What is the capital of France?\nAnswer:",
                                "choices": ["Paris", "Rome", "bread"], "answer": 0}
    assert qa["records"][2]["answer"] == 1
    assert cloze["kind"] == "generative" and cloze["until"] == ["\n", "."] and cloze["max_new_tokens"] == 5
    assert cloze["records"][0] == {"prompt": "The capital of France is", "answer": ["paris", "Paris."]}


@pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None, reason="lm-eval is not installed (the [test] extra)")
@pytest.mark.parametrize("name", ["tiny_qa", "tiny_cloze"])
def test_lm_eval_yaml_reads_as_lm_eval_itself_reads_it(name, tmp_path, monkeypatch):
    import datasets
    from lm_eval.tasks import TaskManager, get_task_dict

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.chdir(LM_EVAL)  # lm-eval resolves data_files from the working folder
    task = get_task_dict([name], TaskManager(include_path=str(LM_EVAL), include_defaults=False))[name]
    ours = read_lm_eval_yaml(LM_EVAL / f"{name}.yaml")
    docs = list(task.eval_docs)
    assert len(docs) == len(ours["records"])
    for doc, rec in zip(docs, ours["records"]):
        if ours["kind"] == "multiple_choice":
            assert rec["context"] == task.fewshot_context(doc, 0) and rec["choices"] == task.doc_to_choice(doc)
            assert rec["answer"] == task.doc_to_target(doc) and task.config.target_delimiter == ours["delimiter"]
        else:
            assert rec["prompt"] == task.fewshot_context(doc, 0) and rec["answer"] == task.doc_to_target(doc)
            assert task.config.generation_kwargs["until"] == ours["until"]


def test_lm_eval_yaml_outside_the_subset_is_refused_or_read_by_lm_eval(tmp_path, monkeypatch):
    (tmp_path / "t.yaml").write_text("task: t\ndataset_path: json\noutput_type: loglikelihood\n")
    with pytest.raises(DataError, match="output_type loglikelihood: kdistill scores multiple_choice and generate_until"):
        read_task(tmp_path / "t.yaml")
    (tmp_path / "u.yaml").write_text("task: u\ndataset_path: json\noutput_type: multiple_choice\n"
                                     "dataset_kwargs: {data_files: {test: missing.jsonl}}\ndoc_to_text: q\n"
                                     "doc_to_choice: c\ndoc_to_target: a\n")
    with pytest.raises(DataError, match="data file missing.jsonl not found"):
        read_task(tmp_path / "u.yaml")
    monkeypatch.setitem(__import__("sys").modules, "lm_eval.tasks", None)  # as if lm-eval were not installed
    (tmp_path / "v.yaml").write_text("task: v\ndataset_path: json\noutput_type: multiple_choice\n"
                                     "process_docs: !function utils.process\n")
    with pytest.raises(DataError, match="pip install lm-eval"):
        read_task(tmp_path / "v.yaml")


def test_lm_eval_yamls_for_every_format_and_the_complete_command(tmp_path):
    tasks = [FIXTURES / "bigbench_mc" / "task.json", FIXTURES / "tiny_mc.jsonl", LM_EVAL / "tiny_cloze.yaml"]
    names = write_task_yamls(tasks, tmp_path, 7)
    assert names == ["kd_bigbench_mc", "kd_tiny_mc", "kd_tiny_cloze"]
    bb = (tmp_path / "kd_bigbench_mc.yaml").read_text()
    assert 'target_delimiter: ""' in bb and str((tmp_path / "kd_bigbench_mc.jsonl").resolve()) in bb
    written = [json.loads(line) for line in (tmp_path / "kd_bigbench_mc.jsonl").read_text().splitlines()]
    assert written == read_task(tasks[0])["records"]  # lm-eval scores the very records kdistill scored
    assert str((FIXTURES / "tiny_mc.jsonl").resolve()) in (tmp_path / "kd_tiny_mc.yaml").read_text()
    cloze = (tmp_path / "kd_tiny_cloze.yaml").read_text()
    assert 'until: ["\\n", "."]' in cloze and "max_gen_toks: 5" in cloze
    command = lm_eval_command("runs/demo/student", tmp_path, names, "bfloat16", "cuda:0")
    assert command == (f"lm_eval --model hf --model_args pretrained=runs/demo/student,dtype=bfloat16 --device cuda:0 "
                       f"--batch_size 1 --include_path {tmp_path} --tasks kd_bigbench_mc,kd_tiny_mc,kd_tiny_cloze")
