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
