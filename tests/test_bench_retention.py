"""scripts/bench_retention.py turns benchmark questions shipped in lm-eval and gensim into task files eval reads."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from kdistill.data.task_files import read_task

ROOT = Path(__file__).resolve().parents[1]


def test_the_retention_tasks_are_task_files_with_their_answers(tmp_path):
    pytest.importorskip("lm_eval", reason="the questions ship inside lm-eval (a test extra)")
    pytest.importorskip("gensim", reason="the analogy questions ship inside gensim (a test extra)")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_retention.py"), "--write-tasks",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    mmlu, mc, gen = (read_task(tmp_path / f"{n}.jsonl") for n in ("mmlu_dev", "bbh_mc", "bbh_gen"))
    assert (tmp_path / "analogy_mc.jsonl").is_file() and (tmp_path / "analogy_gen.jsonl").is_file()
    assert mmlu["kind"] == mc["kind"] == "multiple_choice" and gen["kind"] == "generative"
    assert len(mmlu["records"]) > 250 and len(mc["records"]) > 50 and gen["records"]
    first = mmlu["records"][0]  # abstract algebra's first worked example: its answer is (C)
    assert first["choices"] == ["A", "B", "C", "D"] and first["answer"] == 2
    assert first["context"].endswith("D. False, True\nAnswer:")
    assert all(r["answer"] in r["choices"] for r in mc["records"] if isinstance(r["answer"], str))


def _script():
    spec = importlib.util.spec_from_file_location("bench_retention", ROOT / "scripts" / "bench_retention.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_analogy_questions_ask_within_a_section_and_never_the_worked_examples(tmp_path):
    words = tmp_path / "questions-words.txt"
    capitals = ["Athens Greece", "Paris France", "Rome Italy", "Oslo Norway", "Lima Peru", "Kyiv Ukraine"]
    lines = [": capital-common-countries"] + [f"{a} {b}" for a in capitals for b in capitals if a != b]
    nouns = ["cat cats", "dog dogs", "hand hands", "eye eyes", "car cars", "small smaller", "big bigger"]
    lines += [": gram8-plural"] + [f"{a} {b}" for a in nouns for b in nouns if a != b]
    words.write_text("\n".join(lines) + "\n")
    mc, gen = _script().analogies(words, per_section=5, seed=1)
    assert len(mc) == len(gen) == 10 and [r["section"] for r in mc].count("gram8-plural") == 5
    for m, g in zip(mc, gen):
        a, b, c = m["context"].splitlines()[-1].removesuffix(" is to").replace(" is to ", " ").replace(" as ", " ").split()
        assert (c, g["answer"]) not in {("Rome", "Italy"), ("small", "smaller"), ("Paris", "France")}
        assert m["context"] == g["prompt"] and m["choices"][m["answer"]] == g["answer"]
        assert len(set(m["choices"])) == 4 and not {a, b, c} & set(m["choices"])
        section = capitals if m["section"].startswith("capital") else nouns
        assert set(m["choices"]) <= {x.split()[1] for x in section}  # all answers of the question's section
    assert mc == _script().analogies(words, per_section=5, seed=1)[0]  # the same seed, the same questions


def test_the_shipped_analogy_test_set_becomes_two_tasks(tmp_path):
    pytest.importorskip("gensim", reason="the analogy questions ship inside gensim (a test extra)")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_retention.py"), "--write-tasks",
                           str(tmp_path), "--only", "analogy_mc", "analogy_gen"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    mc, gen = (read_task(tmp_path / f"{n}.jsonl") for n in ("analogy_mc", "analogy_gen"))
    assert mc["kind"] == "multiple_choice" and gen["kind"] == "generative"
    assert len(mc["records"]) == len(gen["records"]) == 14 * 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["analogy_gen.jsonl", "analogy_mc.jsonl"]
