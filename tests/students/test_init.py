"""Layer selection: the fast greedy's cached prefixes give the plain KL, and layers that do nothing go first."""
import pytest
import torch
from helpers import tiny_llama

from kdistill.base.errors import ConfigError
from kdistill.students.init import (
    TeacherTargets,
    calibration_subset,
    even_layers,
    first_last_layers,
    importance_layers,
    layers_kl,
    removal_scores,
    select_layers,
)


def batch(vocab=60, b=3, t=10):
    g = torch.Generator().manual_seed(0)
    am = torch.ones(b, t, dtype=torch.long)
    am[2, 7:] = 0
    return {"input_ids": torch.randint(3, vocab, (b, t), generator=g), "attention_mask": am, "mask": am.bool()}


def teacher_with_idle_layers(idle=(1, 3, 4)):
    """Six layers; the `idle` ones add nothing to the residual stream (zero output projections)."""
    teacher = tiny_llama(60, num_hidden_layers=6)
    with torch.no_grad():
        for i in idle:
            teacher.model.layers[i].self_attn.o_proj.weight.zero_()
            teacher.model.layers[i].mlp.down_proj.weight.zero_()
        for p in teacher.parameters():  # larger weights: removing a working layer costs visible KL
            p.mul_(3.0) if p.dim() == 2 else None
    return teacher


def test_cached_prefix_scores_equal_running_each_pruned_stack():
    teacher, b = tiny_llama(60, num_hidden_layers=4), batch()
    logits = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    full_lp = logits.float().log_softmax(-1)
    current = [0, 1, 3]
    targets = TeacherTargets(full_lp[b["mask"]], teacher.get_output_embeddings().weight)
    fast = removal_scores(teacher, current, b, targets)
    plain = [layers_kl(teacher, [x for x in current if x != r], b, full_lp) for r in current]
    assert fast == pytest.approx(plain, abs=1e-5)


@pytest.mark.parametrize("halving", [True, False])
def test_importance_removes_idle_layers_first(halving):
    assert importance_layers(teacher_with_idle_layers(), 3, batch(), halving=halving) == [0, 2, 5]


def test_calibration_subset_keeps_whole_rows():
    b = batch(b=4, t=10)
    assert calibration_subset(b, 15)["input_ids"].shape == (2, 10)
    assert calibration_subset(b, 1000)["input_ids"].shape == (4, 10)


def test_fixed_strategies_and_errors():
    teacher = tiny_llama(60, num_hidden_layers=6)
    assert even_layers(30, 8) == [0, 4, 8, 12, 17, 21, 25, 29]
    assert first_last_layers(30, 8) == [0, 1, 2, 3, 26, 27, 28, 29]
    assert select_layers("explicit", teacher, 2, [5, 1]) == [5, 1]
    with pytest.raises(ConfigError, match="student.layers must list 2"):
        select_layers("explicit", teacher, 2, [1, 9])
    with pytest.raises(ConfigError, match="deeper than the teacher"):
        select_layers("even", teacher, 7)
