"""Teacher generation: resumes after a kill, masks the prompt, caches by settings and prompts-file content."""
import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

import kdistill.data.teacher_written as G
from kdistill.config.schema import load_config
from kdistill.data.load import load_examples

SETTINGS = {"max_new_tokens": 6, "temperature": 0.8, "top_p": 0.95, "batch_size": 2, "seed": 7}


@pytest.fixture(scope="module")
def teacher(teacher_dir):
    return AutoModelForCausalLM.from_pretrained(teacher_dir).eval(), AutoTokenizer.from_pretrained(teacher_dir)


def _prompts(tok):
    texts = ["Once upon a time", "The king said", "Water boils at", "def add(a, b):", "She opened the door"] * 2
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_generation_resumes_after_a_kill(teacher, tmp_path, monkeypatch):
    model, tok = teacher
    prompts = _prompts(tok)
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "whole"))
    whole, _ = G.generate(model, tok, "t", prompts, SETTINGS, "cpu")

    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path / "killed"))
    real, calls = G._generate_batch, []

    def killed_after_three(*args):
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a kill between two batches
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(G, "_generate_batch", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        G.generate(model, tok, "t", prompts, SETTINGS, "cpu")
    [folder] = (tmp_path / "killed" / "generated").iterdir()
    partial = folder / G.PARTIAL
    assert len(partial.read_text().splitlines()) == 3 and not (folder / G.RECORDS).exists()
    with open(partial, "a") as f:
        f.write('{"batch": 3, "rows": [{"pro')  # and the kill tore the fourth batch's line

    redone = []
    monkeypatch.setattr(G, "_generate_batch", lambda *args: redone.append(1) or real(*args))
    resumed, folder = G.generate(model, tok, "t", prompts, SETTINGS, "cpu")
    assert len(redone) == 2                       # batches 3 and 4 only
    assert resumed == whole                       # exactly what an uninterrupted run writes
    assert not partial.exists() and (folder / G.RECORDS).is_file()
    again, _ = G.generate(model, tok, "t", prompts, SETTINGS, "cpu")
    assert again == whole and len(redone) == 2    # read from the cache


def test_every_prompt_in_order_with_its_own_ids(teacher, tmp_path, monkeypatch):
    model, tok = teacher
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path))
    prompts = _prompts(tok)[:5]
    records, _ = G.generate(model, tok, "t", prompts, {**SETTINGS, "temperature": 0.0}, "cpu")
    assert [r["prompt"] for r in records] == list(range(5))
    for r, p in zip(records, prompts):
        assert r["ids"][:r["n_prompt"]] == p and 0 < len(r["ids"]) - len(p) <= 6


def _cfg(teacher_dir, prompts, *more):
    return load_config(None, [f"teacher.model={teacher_dir}", f"data.generate.prompts={prompts}",
                              "data.generate.max_new_tokens=8", "data.generate.samples_per_prompt=2",
                              "train.seq_len=64", "data.generate.filter.enabled=false", *more])


def test_prompts_file_generation_masks_the_prompt(teacher, teacher_dir, tmp_path):
    model, tok = teacher
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "Name a fruit."}) + "\n"
                    + json.dumps({"instruction": "Name a colour.", "context": "Be brief.", "response": "ignored"}) + "\n")
    examples = load_examples(_cfg(teacher_dir, path), model, tok, "t", "cpu")
    assert len(examples) == 4 and examples.report["source"] == "prompts"
    for e in examples:
        first = e["mask"].index(True)
        assert not any(e["mask"][:first]) and all(e["mask"][first:])
        prompt = tok.decode(e["ids"][:first])
        assert prompt.endswith("<|im_start|>assistant\n") and ("Name a fruit." in prompt or "Be brief." in prompt)
        assert "ignored" not in tok.decode(e["ids"])
    assert json.loads(examples.report_path.read_text())["kept"] == 4


def test_plain_prompt_format_continues_the_text(teacher, teacher_dir, tmp_path):
    model, tok = teacher
    path = tmp_path / "prompts.txt"
    path.write_text("Once upon a time\n\nThe king said\n")
    examples = load_examples(_cfg(teacher_dir, path, "data.generate.prompt_format=plain"), model, tok, "t", "cpu")
    starts = {tok.decode(e["ids"][:e["mask"].index(True)]) for e in examples}
    assert starts == {"Once upon a time", "The king said"}


def test_the_cache_key_covers_the_prompts_file_content(teacher, teacher_dir, tmp_path):
    model, tok = teacher
    path = tmp_path / "prompts.txt"
    path.write_text("Name a fruit.\n")
    first = load_examples(_cfg(teacher_dir, path), model, tok, "t", "cpu").report_path.parent
    assert load_examples(_cfg(teacher_dir, path), model, tok, "t", "cpu").report_path.parent == first
    path.write_text("Name a tree.\n")
    assert load_examples(_cfg(teacher_dir, path), model, tok, "t", "cpu").report_path.parent != first


def test_builtin_generated_data_masks_the_prompt_too(teacher, teacher_dir):
    model, tok = teacher
    cfg = load_config(None, [f"teacher.model={teacher_dir}", "data.generate.num_samples=4",
                             "data.generate.max_new_tokens=6", "train.seq_len=64"])
    for e, text in zip(load_examples(cfg, model, tok, "t", "cpu"), G.prompt_texts(tok, 4)):
        assert tok.decode(e["ids"][:e["mask"].index(True)]) == text


def test_fit_cuts_a_long_prompt_from_the_left():
    ids, n = G.fit(list(range(100)) + [7, 8, 9], 100, seq_len=31)
    assert len(ids) == 32 and ids[-3:] == [7, 8, 9] and n == 29 and ids[0] == 71


def test_two_runs_of_the_same_data_take_turns(teacher, tmp_path, monkeypatch):
    """While one run writes a folder, another with the same settings waits and reads its records."""
    import threading
    import time

    model, tok = teacher
    prompts = _prompts(tok)[:4]
    monkeypatch.setenv("KDISTILL_CACHE", str(tmp_path))
    real, calls, started = G._generate_batch, [], threading.Event()

    def slow(*args):
        calls.append(threading.current_thread().name)
        started.set()
        time.sleep(0.3)
        return real(*args)

    monkeypatch.setattr(G, "_generate_batch", slow)
    results = {}
    first = threading.Thread(target=lambda: results.update(a=G.generate(model, tok, "t", prompts, SETTINGS, "cpu")),
                             name="first")
    first.start()
    assert started.wait(30)
    second = G.generate(model, tok, "t", prompts, SETTINGS, "cpu")  # waits for the first's lock
    first.join()
    assert set(calls) == {"first"} and len(calls) == 2   # two batches, all written by the first run
    assert second == results["a"]
