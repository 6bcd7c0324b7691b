"""The data-distillation paths through `distill`: CoT and self-instruct configs with a teacher whose replies
are scripted (a tiny random teacher solves nothing), the data report, and bad input refused before any
model loads."""
import json
from pathlib import Path

import pytest

import kdistill.data.teacher_written as G
from kdistill.base.errors import DataError
from kdistill.config.schema import load_config
from kdistill.data.answers import parse_number
from kdistill.run import preflight
from kdistill.run.distill import distill

ROOT = Path(__file__).resolve().parents[2]
FAST = ["train.max_steps=1", "train.seq_len=48", "train.batch_size=2", "train.threads=1", "student.num_layers=1",
        "eval.max_new_tokens=2", "eval.max_batches=1", "eval.measure_speed=false", "data.generate.samples_per_prompt=1"]
ANSWERS = {json.loads(line)["question"]: json.loads(line)["answer"]
           for line in (ROOT / "data/arith_word_problems.jsonl").read_text().splitlines()}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "cache"))


def only_report(tmp_path) -> Path:
    [path] = (tmp_path / "cache" / "generated").glob("*/data_report.json")
    return path


def scripted(reply):
    """A stand-in for the teacher's sampling: reply(prompt text) -> the text it writes."""
    def generate_batch(model, tokenizer, prompts, settings, device):
        return [tokenizer(reply(tokenizer.decode(p)), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                for p in prompts]
    return generate_batch


def solve_evens(prompt: str) -> str:
    """Right for problems whose answer is an even whole number, off by one for the others."""
    question, answer = next((q, a) for q, a in ANSWERS.items() if q in prompt)
    value = parse_number(answer)
    right = value == int(value) and int(value) % 2 == 0
    return f"Working: {' '.join(question.split()[:6])}\nAnswer: {answer if right else value + 1}"


def test_cot_config_keeps_only_correct_rationales_and_reports(teacher_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(G, "_generate_batch", scripted(solve_evens))
    cfg = load_config(ROOT / "configs/cot.yaml", [f"teacher.model={teacher_dir}", f"output_dir={tmp_path / 'run'}",
                                                  "data.generate.cot.problems=" + str(ROOT / "data/arith_word_problems.jsonl"), *FAST,
                                                  "train.seq_len=128"])
    result = distill(cfg)
    assert result["heldout"]["tokens"] > 0
    report = json.loads(only_report(tmp_path).read_text())
    evens = sum(parse_number(a) == int(parse_number(a)) and int(parse_number(a)) % 2 == 0 for a in ANSWERS.values())
    cot = report["cot"]
    assert cot["problems"] == len(ANSWERS) and cot["correct"] == evens
    assert cot["pass_rate"] == pytest.approx(evens / len(ANSWERS))
    assert report["dropped"]["wrong_answer"] == len(ANSWERS) - evens
    assert report["kept"] == evens and report["examples"] == evens  # one example each, answer tokens weighted 2


def test_self_instruct_config_writes_and_answers_new_instructions(teacher_dir, tmp_path, monkeypatch):
    counter = iter(range(10**6))

    def reply(prompt):
        if "Write one new task" in prompt:
            n = next(counter)
            topic = ["volcanoes", "bees", "trains", "tides", "clouds", "maps"][n % 6]
            return f"{n % 7 + 1}. Explain how {topic} work to a curious child."
        return "Here is a clear answer with a few different words " + str(next(counter)) + "."

    monkeypatch.setattr(G, "_generate_batch", scripted(reply))
    cfg = load_config(ROOT / "configs/self_instruct.yaml",
                      [f"teacher.model={teacher_dir}", f"output_dir={tmp_path / 'run'}", *FAST,
                       "data.generate.self_instruct.seed_tasks=" + str(ROOT / "data/seed_tasks.txt"),
                       "data.generate.self_instruct.num_instructions=4", "data.generate.filter.near_duplicate=null"])
    distill(cfg)
    report = json.loads(only_report(tmp_path).read_text())
    si = report["self_instruct"]
    assert si["requests"] == 8 and si["instructions"] == 4 and si["dropped"] == {"surplus": 2, "duplicate": 2}
    assert report["kept"] == 4


def _cfg(tmp_path, teacher_dir, *more):
    return load_config(None, [f"teacher.model={teacher_dir}", f"output_dir={tmp_path / 'run'}", *FAST, *more])


@pytest.mark.parametrize("name, content, key, match", [
    ("p.txt", "", "data.generate.prompts", r"p.txt holds no prompts"),
    ("p.jsonl", '{"prompt": "a"}\n{oops\n', "data.generate.prompts", r"p.jsonl, line 2: not valid JSON"),
    ("s.txt", "\n\n", "data.generate.self_instruct.seed_tasks", r"s.txt holds no prompts"),
    ("c.jsonl", '{"question": "1+1?", "solution": "2"}\n', "data.generate.cot.problems",
     r"c.jsonl, line 1: .*known answer.*\['question', 'solution'\]"),
])
def test_bad_files_fail_before_any_model_loads(tmp_path, teacher_dir, monkeypatch, name, content, key, match):
    path = tmp_path / name
    path.write_text(content)
    monkeypatch.setattr("kdistill.sources.open_source", lambda *a: pytest.fail("a model was loaded"))
    with pytest.raises(DataError, match=match):
        preflight.check(_cfg(tmp_path, teacher_dir, f"{key}={path}"))
    with pytest.raises(DataError, match=match):
        distill(_cfg(tmp_path, teacher_dir, f"{key}={path}"))
    assert not (tmp_path / "run").exists()


def test_every_sample_filtered_out_names_the_rule(tmp_path, teacher_dir, monkeypatch):
    monkeypatch.setattr(G, "_generate_batch", scripted(lambda p: "Fine."))
    prompts = tmp_path / "p.txt"
    prompts.write_text("Name a fruit.\nName a tree.\nName a bird.\n")
    with pytest.raises(DataError, match=r"every one of the 3 .*'too_short' removed the most \(3\).*min_chars"):
        distill(_cfg(tmp_path, teacher_dir, f"data.generate.prompts={prompts}", "data.generate.filter.min_chars=50"))
    assert not (tmp_path / "run").exists()


def test_a_data_file_with_records_without_text_says_so_and_reports_them(tmp_path, teacher_dir, capsys):
    data = tmp_path / "notes.jsonl"
    lines = [{"text": f"Once upon a time a fox ran {i} miles to the river and back."} for i in range(12)]
    lines[3], lines[7] = {"text": None}, {"title": "no text"}
    data.write_text("".join(json.dumps(r) + "\n" for r in lines))
    distill(_cfg(tmp_path, teacher_dir, f"data.path={data}"))
    assert f"data: 2 of 12 records of {data} dropped: 2 without text" in capsys.readouterr().out
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["records"] == 12 and report["dropped"] == {"no_text": 2}
    fields = "'text' or 'content' or 'document' or 'body' or 'story'"
    assert report["dropped_records"]["no_text"] == [f"{data}, line 4: 'text' is null",
                                                    f"{data}, line 8: no {fields} field"]


def test_a_text_field_that_names_no_field_is_refused_before_any_model_loads(tmp_path, teacher_dir, monkeypatch):
    data = tmp_path / "dolly.jsonl"
    data.write_text(json.dumps({"instruction": "Name a fruit.", "context": "", "response": "An apple."}) + "\n")
    monkeypatch.setattr("kdistill.sources.open_source", lambda *a: pytest.fail("a model was loaded"))
    with pytest.raises(DataError, match=r"data.text_field='respones' names no field of any record; the records have "
                                        r"fields \['context', 'instruction', 'response'\]"):
        distill(_cfg(tmp_path, teacher_dir, f"data.path={data}", "data.text_field=respones"))
    assert not (tmp_path / "run").exists()
