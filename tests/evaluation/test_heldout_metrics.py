"""Held-out metrics against numbers worked out by hand on a 3-token vocabulary."""
import math
from types import SimpleNamespace

import pytest
import torch

from kdistill.evaluation.heldout import batch_sums, heldout_metrics, kl_distribution, topk_agreement
from kdistill.losses import DenseSignal

LN2 = math.log(2)
P = [0.5, 0.25, 0.25]  # teacher
Q = [0.25, 0.5, 0.25]  # student
# KL(p ‖ q) = 0.5 ln(0.5/0.25) + 0.25 ln(0.25/0.5) + 0.25 ln 1 = 0.25 ln 2
KL_PQ = 0.25 * LN2
# m = (p + q) / 2 = [0.375, 0.375, 0.25]; KL(p ‖ m) = 0.5 ln(4/3) + 0.25 ln(2/3) = KL(q ‖ m) by symmetry
JS_PQ = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3)


class FixedLogits:
    """A 'model' that returns the logits stored for a batch, found by the batch's first input id."""

    def __init__(self, table):
        self.table = table

    def __call__(self, input_ids, **kwargs):
        return SimpleNamespace(logits=self.table[int(input_ids[0, 0])])


class FixedSource:
    """A teacher source whose signal is the logits stored for a batch (see FixedLogits)."""

    against = "teacher"

    def __init__(self, table):
        self.table = table

    def signal(self, batch, vocab_size):
        return DenseSignal(logits=self.table[int(batch["input_ids"][0, 0])])


def _logits(*rows):
    """Log-probabilities as logits, one row per position. -> (1, T, 3)"""
    return torch.tensor([[math.log(x) for x in row] for row in rows]).unsqueeze(0)


def _batch(first_id, targets, mask):
    return {"input_ids": torch.tensor([[first_id, 0]]), "attention_mask": torch.ones(1, 2, dtype=torch.long),
            "targets": torch.tensor([targets]), "mask": torch.tensor([mask])}


def test_every_metric_matches_the_hand_computed_example():
    # batch 1: position 0 counts (teacher P, student Q, next token 0); position 1 is masked out
    # batch 2: position 0 is masked out; position 1 counts (both P, next token 2)
    batches = [_batch(7, [0, 1], [True, False]), _batch(8, [1, 2], [False, True])]
    teacher = FixedSource({7: _logits(P, Q), 8: _logits(Q, P)})
    student = FixedLogits({7: _logits(Q, Q), 8: _logits(P, P)})
    m = heldout_metrics(student, teacher, batches, "cpu")
    assert m["tokens"] == 2
    assert m["kl"] == pytest.approx((KL_PQ + 0) / 2, abs=1e-6)
    assert m["js"] == pytest.approx((JS_PQ + 0) / 2, abs=1e-6)
    assert m["top1_agreement"] == pytest.approx(0.5)  # argmax 0 vs 1, then 0 vs 0
    assert m["top10_agreement"] == pytest.approx(1.0)  # V=3 < 10: all 3 ids are everyone's top-k
    # NLL: teacher -ln .5 and -ln .25, student -ln .25 and -ln .25 -> exp of the means
    assert m["ppl_teacher"] == pytest.approx(math.exp((LN2 + 2 * LN2) / 2), rel=1e-6)  # 2^1.5
    assert m["ppl_student"] == pytest.approx(4.0, rel=1e-6)
    assert m["kl_by_position"] == pytest.approx([KL_PQ, 0.0], abs=1e-6)
    q = m["kl_quantiles"]  # two values, 0 and KL_PQ, linear interpolation between them
    assert q["p50"] == pytest.approx(0.5 * KL_PQ, abs=1e-6)
    assert q["p90"] == pytest.approx(0.9 * KL_PQ, abs=1e-6)
    assert q["max"] == pytest.approx(KL_PQ, abs=1e-6)


def test_teacher_cache_is_filled_once_and_reused():
    batches = [_batch(7, [0, 1], [True, True])]
    teacher = FixedSource({7: _logits(P, P)})
    cache = {}
    first = heldout_metrics(FixedLogits({7: _logits(Q, P)}), teacher, batches, "cpu", cache)
    assert len(cache) == 1
    teacher.table = {}  # a second call must not run the teacher
    again = heldout_metrics(FixedLogits({7: _logits(Q, P)}), teacher, batches, "cpu", cache)
    assert again["kl"] == pytest.approx(first["kl"]) == pytest.approx(KL_PQ / 2, abs=1e-6)


def test_top10_agreement_counts_shared_ids():
    teacher = -torch.arange(12.0)  # teacher's top-10: ids 0..9
    student = torch.arange(12.0)  # student's top-10: ids 2..11; shared: 2..9
    assert topk_agreement(student, teacher).item() == pytest.approx(0.8)
    assert topk_agreement(teacher, teacher).item() == pytest.approx(1.0)


def test_padded_teacher_vocabulary_and_empty_mask_are_safe():
    s = torch.randn(1, 3, 5)
    t = torch.randn(1, 3, 5)
    t[..., 4] = float("-inf")  # an id outside the teacher's support
    sums = batch_sums(s, t, torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool))
    assert all(math.isfinite(sums[k]) for k in ("kl", "js", "agree10", "nll_student", "nll_teacher"))
    empty = kl_distribution(torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert empty["kl_by_position"] == [] and empty["kl_quantiles"]["max"] == 0.0
