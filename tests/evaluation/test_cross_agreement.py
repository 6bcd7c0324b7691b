"""Agreement across tokenizers counts named strings only: two sides that both put the pooled "other" bucket
first agree on nothing (a random pair once scored 100% top-1 that way)."""
import torch

from kdistill.evaluation.cross_metrics import cross_summary, support_agreement


def _lp(rows):
    return torch.tensor(rows, dtype=torch.float32).log_softmax(-1)


def test_both_sides_on_other_is_not_agreement():
    # support: two matched strings, the group's own entry, "other" (last)
    s = _lp([[0.1, 0.2, 0.3, 5.0], [0.1, 0.2, 0.3, 5.0]])
    t = _lp([[0.3, 0.2, 0.1, 5.0], [0.0, 0.0, 0.0, 5.0]])
    sums = support_agreement(s, t)
    assert sums["agree"] == 0 and sums["both_other"] == 2
    summary = cross_summary({**sums, "groups": 2})
    assert summary["top1_agreement"] == 0.0 and summary["top1_both_other"] == 1.0


def test_the_same_named_string_first_is_agreement_and_other_is_apart():
    s = _lp([[5.0, 0.0, 0.0, 1.0], [0.0, 5.0, 0.0, 1.0], [0.3, 0.2, 0.1, 5.0]])
    t = _lp([[5.0, 0.0, 0.0, 1.0], [5.0, 0.0, 0.0, 1.0], [0.1, 0.2, 0.3, 5.0]])
    sums = support_agreement(s, t, k=2)
    assert sums["agree"] == 1 and sums["both_other"] == 1
    summary = cross_summary({**sums, "groups": 3})
    assert summary["top1_agreement"] == 0.5  # 1 of the 2 groups where a string was named first
    # top-2 overlaps, "other" never counted: row 0 {0, 3}&{0, 3} -> 1 named; row 1 {1, 3}&{0, 3} -> 0; row 2 {3, 0}&{3, 2} -> 0
    assert sums["agree10"] == 0.5
