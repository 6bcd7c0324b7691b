"""The one reduction: global token count, zero tokens give 0, masked values never leak."""
import pytest
import torch

from kdistill.losses import reduce_tokens


def test_sum_over_masked_tokens_divided_by_global_count():
    values = torch.arange(6.0).reshape(2, 3)
    mask = torch.tensor([[True, False, True], [False, True, True]])
    assert reduce_tokens(values, mask, 10).item() == pytest.approx((0 + 2 + 4 + 5) / 10)
    assert reduce_tokens(values, mask, torch.tensor(10)).item() == pytest.approx((0 + 2 + 4 + 5) / 10)
    assert reduce_tokens(values[mask], None, 4).item() == 11 / 4


def test_micro_batches_sum_to_the_full_batch():
    values, mask = torch.randn(4, 5), torch.rand(4, 5) > 0.4
    n = int(mask.sum())
    parts = sum(reduce_tokens(values[i:i + 1], mask[i:i + 1], n) for i in range(4))
    torch.testing.assert_close(parts, values[mask].mean())


def test_zero_tokens_give_zero_and_zero_gradient():
    values = torch.full((2, 3), float("nan"), requires_grad=True)
    loss = reduce_tokens(values, torch.zeros(2, 3, dtype=torch.bool), 0)
    loss.backward()
    assert loss.item() == 0.0 and (values.grad == 0).all()
    assert reduce_tokens(torch.zeros(0), None, torch.tensor(0)).item() == 0.0


def test_nan_at_masked_tokens_does_not_leak():
    values = torch.tensor([1.0, float("nan"), float("inf")])
    assert reduce_tokens(values, torch.tensor([True, False, False]), 1).item() == 1.0
