"""Batches: collation shapes and masks, resumable order, held-out split."""
import torch

from kdistill.data.batches import BatchStream, collate, split


def _examples(n):
    return [{"ids": list(range(i, i + 3 + i % 4)), "mask": [True] * (3 + i % 4)} for i in range(n)]


def test_collate_pads_and_shifts():
    b = collate([{"ids": [5, 6, 7], "mask": [True, False, True]}, {"ids": [1, 2], "mask": [True, True]}], pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6], [1, 0]]
    assert b["targets"].tolist() == [[6, 7], [2, 0]]
    assert b["mask"].tolist() == [[False, True], [True, False]]
    assert b["attention_mask"].tolist() == [[1, 1], [1, 0]]


def test_stream_state_resumes_exactly():
    ex = _examples(11)
    a = BatchStream(ex, 4, seed=3, pad_id=0)
    for _ in range(5):
        a.next()
    b = BatchStream(ex, 4, seed=3, pad_id=0)
    b.load_state(a.state())
    for _ in range(6):
        assert torch.equal(a.next()["input_ids"], b.next()["input_ids"])


def test_split_is_disjoint_and_seeded():
    ex = _examples(20)
    train, held = split(ex, 0.1, seed=0)
    assert len(held) == 2 and len(train) == 18
    assert split(ex, 0.1, seed=0)[1] == held
    assert not any(h is t for h in held for t in train)


def test_a_single_example_is_both_sides_of_the_split_and_says_so(caplog):
    one = [{"ids": [1, 2, 3], "mask": [True] * 3}]
    with caplog.at_level("WARNING", logger="kdistill"):
        train, held = split(one, 0.1, seed=0)
    assert train == held == one
    assert "1 example: it is both the training and the held-out example" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="kdistill"):
        split(one * 5, 0.2, seed=0)
    assert not caplog.text


def test_samples_of_one_prompt_stay_on_one_side_of_the_split():
    import random

    ex = [{**e, "group": f"prompt {i // 4}"} for i, e in enumerate(_examples(40))]  # 4 samples per prompt
    train, held = split(ex, 0.1, seed=0)
    assert len(held) == 4 and len(train) == 36  # one whole prompt held out
    assert not {e["group"] for e in held} & {e["group"] for e in train}
    alone = _examples(20)  # no groups: the plain seeded shuffle it always was
    order = list(range(20))
    random.Random(0).shuffle(order)
    assert split(alone, 0.1, seed=0) == ([alone[i] for i in order[2:]], [alone[i] for i in order[:2]])


def test_one_prompt_for_everything_is_split_per_example_and_says_so(caplog):
    ex = [{**e, "group": "the only prompt"} for e in _examples(10)]
    with caplog.at_level("WARNING", logger="kdistill"):
        train, held = split(ex, 0.2, seed=0)
    assert len(held) == 2 and len(train) == 8 and "share one prompt" in caplog.text


def test_teacher_written_examples_carry_their_prompt_and_a_cache_keeps_it():
    import numpy as np

    from kdistill.cache import shard as S
    from kdistill.data.teacher_written import examples_from_generated

    records = [{"ids": [1, 2, 3, 4, 5], "n_prompt": 2, "prompt_text": f"p{i // 2}"} for i in range(4)]
    examples = examples_from_generated(records, seq_len=8)
    assert [e["group"] for e in examples] == ["p0", "p0", "p1", "p1"]
    tensors = S.encode_tokens(examples, 8)
    groups = tensors["groups"]
    assert groups[0] == groups[1] != groups[2] == groups[3] and (groups >= 0).all()
    assert "groups" not in S.encode_tokens([{"ids": [1, 2], "mask": [True, True]}], 8)
    assert np.array_equal(S.encode_tokens(examples, 8)["groups"], groups)  # stable across calls
