"""Weight and temperature schedules, and the entropy-driven temperature."""
import math

import pytest
import torch

from kdistill.base.errors import ConfigError
from kdistill.losses import DenseSignal, SparseSignal
from kdistill.losses.config import parse_schedule
from kdistill.losses.schedules import EntropyTemperature


def schedule(spec):
    return parse_schedule(spec, "loss.terms[0].weight", positive=False, allow_entropy=True)


def test_constant_linear_cosine_step():
    assert schedule(0.5)(0.7) == 0.5 and schedule("1e-3")(0.0) == 0.001  # YAML's string floats
    assert schedule({"schedule": "constant", "value": 2})(1.0) == 2.0
    linear = schedule({"schedule": "linear", "start": 4.0, "end": 1.0})
    assert [linear(x) for x in (0.0, 0.5, 1.0, 2.0)] == [4.0, 2.5, 1.0, 1.0]
    cosine = schedule({"schedule": "cosine", "start": 4.0, "end": 1.0})
    assert cosine(0.0) == 4.0 and cosine(0.5) == pytest.approx(2.5) and cosine(1.0) == pytest.approx(1.0)
    assert cosine(0.25) == pytest.approx(1 + 3 * (1 + math.cos(math.pi / 4)) / 2)
    step = schedule({"schedule": "step", "values": [4, 2, 1], "boundaries": [0.3, 0.6]})
    assert [step(x) for x in (0.0, 0.29, 0.3, 0.59, 0.6, 1.0)] == [4, 4, 2, 2, 1, 1]


def test_entropy_temperature_formula():
    rule = EntropyTemperature(confident=4.0, uncertain=1.0)
    uniform, onehot = torch.zeros(1, 8), torch.tensor([[0.0] + [-1e4] * 7])
    mixed = torch.tensor([[0.0, 0.0, float("-inf"), float("-inf")]])  # uniform on its support of 2
    temps = rule(DenseSignal(logits=torch.cat([uniform[:, :4], onehot[:, :4], mixed])))
    torch.testing.assert_close(temps, torch.tensor([1.0, 4.0, 1.0]))
    p = torch.tensor([0.5, 0.3, 0.2])
    h = -(p * p.log()).sum() / math.log(3)
    assert rule(DenseSignal(logits=p.log()[None]))[0].item() == pytest.approx(4.0 - 3.0 * h.item(), rel=1e-6)
    sparse = rule(SparseSignal.from_logits(p.log()[None], 3))
    assert sparse[0].item() == pytest.approx(4.0 - 3.0 * h.item(), rel=1e-6)


@pytest.mark.parametrize("spec,message", [
    ({"schedule": "cosin", "start": 1, "end": 0}, "loss.terms[0].weight.schedule: unknown schedule 'cosin'; "
                                                   "did you mean 'cosine'?"),
    ({"schedule": "linear", "start": 1}, "needs end"),
    ({"schedule": "linear", "start": 1, "end": 0, "ende": 2}, "weight.ende: unknown key; did you mean 'end'?"),
    ({"schedule": "step", "values": [1, 2], "boundaries": [0.5, 0.7]}, "len(values) == len(boundaries) + 1"),
    ({"schedule": "step", "values": [1, 2, 3], "boundaries": [0.7, 0.5]}, "must be ascending"),
    (-1.0, "weight: must satisfy 0.0 <= weight"),
    ("abc", "expected a number"),
])
def test_schedule_errors_name_the_key(spec, message):
    with pytest.raises(ConfigError, match=None) as err:
        schedule(spec)
    assert message in str(err.value)
