"""Each quality-filter rule on hand-made samples, the near-duplicate index, and the all-dropped error."""
import json

import pytest

from kdistill.config.generation import FilterConfig
from kdistill.data.dedup import NearDuplicates, jaccard, shingles
from kdistill.data.filters import contamination_grams, nothing_kept, quality_filter, repeated_fraction, score_logprobs

GOOD = "Rain forms when water vapour cools and condenses into droplets that grow heavy enough to fall."


def sample(text, prompt="Explain rain.", **extra):
    return {"text": text, "prompt_text": prompt, **extra}


def run(samples, grams=None, **cfg):
    kept, dropped = quality_filter(samples, FilterConfig(**cfg), grams)
    return [s["text"] for s in kept], dict(dropped)


def test_length_bounds():
    kept, dropped = run([sample("  "), sample("short"), sample(GOOD), sample(GOOD + " " + GOOD * 3)],
                        min_chars=10, max_chars=200)
    assert kept == [GOOD] and dropped == {"too_short": 2, "too_long": 1}


def test_repeated_ngrams():
    loop = "the cat sat on the mat " * 8
    assert repeated_fraction(loop, 3) > 0.8 and repeated_fraction(GOOD, 3) == 0
    assert run([sample(loop), sample(GOOD)]) == ([GOOD], {"repeated_ngrams": 1})
    assert run([sample(loop)], max_repeated_ngrams=1.0)[0] == [loop]      # 1 = off


def test_low_teacher_logprob():
    samples = [sample(GOOD, logprob=-1.2), sample("Rain is soup from the sky.", logprob=-6.0)]
    assert run(samples, min_logprob=-3.0) == ([GOOD], {"low_logprob": 1})
    assert len(run(samples)[0]) == 2                                        # off by default


def test_exact_and_near_duplicates():
    near = GOOD.replace("heavy", "big")
    samples = [sample(GOOD), sample(GOOD.upper() + "  "), sample(near), sample("A rainbow needs sun and rain.")]
    assert run(samples, near_duplicate=0.6) == ([GOOD, "A rainbow needs sun and rain."],
                                                {"duplicate": 1, "near_duplicate": 1})
    assert len(run(samples, near_duplicate=None, dedup=False)[0]) == 4


def test_contamination_against_task_files(tmp_path):
    gen, mc = tmp_path / "gen.jsonl", tmp_path / "mc.jsonl"
    gen.write_text(json.dumps({"prompt": "Q: What is the capital of France?\nA:", "answer": "Paris"}) + "\n")
    mc.write_text(json.dumps({"context": "Water boils at one hundred degrees", "choices": ["Celsius.", "cats."],
                              "answer": 0}) + "\n")
    grams = contamination_grams([str(gen), str(mc)], 8)
    leaked = sample("Sure. What is the capital of France? Paris, of course.")
    short = sample("Did you know water boils at one hundred degrees Celsius?")      # a record shorter than 8 words
    in_prompt = sample("It is Paris.", prompt="what is the capital of france? paris")
    kept, dropped = run([leaked, short, in_prompt, sample(GOOD)], grams)
    assert kept == [GOOD] and dropped == {"contaminated": 3}


def test_rules_run_in_order_and_each_sample_counts_once():
    kept, dropped = run([sample("x"), sample("x")], min_chars=5)
    assert dropped == {"too_short": 2}


def test_disabled_filter_keeps_everything():
    assert run([sample(""), sample("")], enabled=False)[0] == ["", ""]


def test_nothing_kept_names_the_rule_that_removed_most():
    from collections import Counter

    err = nothing_kept(10, Counter({"too_short": 7, "duplicate": 3}), "r.json")
    assert "'too_short' removed the most (7)" in str(err) and "min_chars" in str(err) and "r.json" in str(err)


def test_minhash_index_finds_near_duplicates_and_not_others():
    index = NearDuplicates(0.8, n=3)
    base = "one two three four five six seven eight nine ten eleven twelve"
    assert not index.add(base)
    assert index.add(base.replace("twelve", "thirteen"))                     # Jaccard 9/11 >= 0.8
    assert not index.add("alpha beta gamma delta epsilon zeta eta theta")
    assert jaccard(shingles(base, 3), shingles(base, 3)) == 1.0


def test_minhash_agreement_estimates_jaccard():
    from kdistill.data.dedup import MinHasher

    a = shingles(" ".join(f"w{i}" for i in range(60)), 1)
    b = shingles(" ".join(f"w{i}" for i in range(20, 80)), 1)           # Jaccard 40 / 80 = 0.5
    h = MinHasher(num_perm=512)
    assert (h.signature(a) == h.signature(b)).mean() == pytest.approx(jaccard(a, b), abs=0.08)


def test_score_logprobs_is_the_teacher_mean_over_response_tokens(teacher_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    s = {"ids": [5, 6, 7, 8, 9], "n_prompt": 2}
    score_logprobs(model, [s], "cpu")
    with torch.no_grad():
        lp = model(torch.tensor([s["ids"]])).logits[0].log_softmax(-1)
    want = (lp[1, 7] + lp[2, 8] + lp[3, 9]) / 3
    assert s["logprob"] == pytest.approx(float(want), abs=1e-5)
