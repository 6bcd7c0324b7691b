"""Several teachers in their own forms (a dense signal on the student's vocabulary beside per-group
CrossSignals of other tokenizers): the objective's loss and gradients are the weighted sum of each
teacher's loss alone, under one token count; a routed part scores only its own examples."""
import pytest
import torch

from kdistill.losses import DenseSignal, build_objective
from kdistill.losses.mixture import Mixture, Part

from ..references import logits
from .test_objective import GROUP_OF, VS, setup

TERMS = [{"kind": "hybrid", "weight": 1.0, "top_k": 5}, {"kind": "uld", "weight": 0.5, "top_k": 5},
         {"kind": "ce", "weight": 0.25}]
NUM_TOKENS = 11  # the optimizer step's global count (more than this batch's 10)


def dense(seed: int) -> DenseSignal:
    return DenseSignal(logits=logits(*GROUP_OF.shape, VS, seed=seed))


def grads(loss, inputs):
    return torch.autograd.grad(loss, inputs, retain_graph=True)


@pytest.mark.parametrize("chunk_size", [2, None])
def test_summed_parts_are_the_weighted_sum_of_each_teacher_alone(chunk_size):
    hidden, weight, targets, mask, cross_b = setup(seed=0)
    cross_c = setup(seed=5)[-1]  # a third teacher, another tokenizer again
    objective = build_objective(TERMS, t2_scale=False, chunk_size=chunk_size)
    parts = {"a": (0.2, dense(7)), "b": (0.5, cross_b), "c": (0.3, cross_c)}
    mixture = Mixture(tuple(Part(name, w, s) for name, (w, s) in parts.items()))
    out = objective(hidden, weight, mixture, targets, mask, NUM_TOKENS)
    alone = {name: objective(hidden, weight, s, targets, mask, NUM_TOKENS) for name, (_, s) in parts.items()}
    want = sum(w * alone[name].loss for name, (w, _) in parts.items())  # weights sum to 1: CE once
    torch.testing.assert_close(out.loss, want, rtol=1e-10, atol=1e-12)
    for got, ref in zip(grads(out.loss, [hidden, weight]), grads(want, [hidden, weight])):
        torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-10)
    for term in ("hybrid", "uld"):
        assert out.terms[term] == pytest.approx(sum(w * alone[n].terms[term] for n, (w, _) in parts.items()))
        for name in parts:
            assert out.terms[f"{term}/{name}"] == pytest.approx(alone[name].terms[term])
    assert out.terms["ce"] == pytest.approx(alone["a"].terms["ce"])


def test_only_grouped_parts_score_ce_once():
    hidden, weight, targets, mask, cross_b = setup(seed=1)
    objective = build_objective(TERMS, t2_scale=False)
    mixture = Mixture((Part("b", 0.4, cross_b), Part("c", 0.6, setup(seed=6)[-1])))
    out = objective(hidden, weight, mixture, targets, mask, NUM_TOKENS)
    want = 0.4 * objective(hidden, weight, cross_b, targets, mask, NUM_TOKENS).loss + \
        0.6 * objective(hidden, weight, mixture.parts[1].signal, targets, mask, NUM_TOKENS).loss
    torch.testing.assert_close(out.loss, want, rtol=1e-10, atol=1e-12)


def test_a_routed_grouped_part_scores_only_its_examples():
    """Row 0 goes to the dense teacher a, row 1 to the cross teacher b (its signal made on row 1 alone)."""
    hidden, weight, targets, mask, _ = setup(seed=2)
    objective = build_objective(TERMS, t2_scale=False)
    one = slice(1, 2)
    sub_b = setup(seed=3)[-1]  # a CrossSignal over the groups of a one-row batch: row 1's groups renumbered
    sub_groups = GROUP_OF[one] - int(GROUP_OF[one].clamp(min=0).min())
    sub_groups = torch.where(GROUP_OF[one] >= 0, sub_groups, -1).reshape(-1)
    n = int(sub_groups.max()) + 1
    sub_b = type(sub_b)(DenseSignal(logits=sub_b.teacher.logits[:n]), sub_b.teacher_rest[:n],
                        sub_b.teacher_first[:n], sub_groups, sub_b.student_pairs, sub_b.teacher_pairs, VS)
    a = dense(8)
    t = GROUP_OF.shape[1]
    local = torch.full((GROUP_OF.numel(),), -1)
    local[:t] = torch.arange(t)  # a's signal is over its one row (row 0)
    a_rows = DenseSignal(logits=a.logits[:1])
    mixture = Mixture((Part("a", 1.0, a_rows, local=local), Part("b", 1.0, sub_b, examples=torch.tensor([1]))))
    out = objective(hidden, weight, mixture, targets, mask, NUM_TOKENS)
    zero = slice(0, 1)
    want_a = objective(hidden[zero], weight, a_rows, targets[zero], mask[zero], NUM_TOKENS)
    want_b = objective(hidden[one], weight, sub_b, targets[one], mask[one], NUM_TOKENS)
    torch.testing.assert_close(out.loss, want_a.loss + want_b.loss, rtol=1e-10, atol=1e-12)
    grad_hidden, = grads(out.loss, [hidden])
    only_b, = grads(want_b.loss, [hidden])
    torch.testing.assert_close(grad_hidden[1], only_b[1], rtol=1e-8, atol=1e-10)  # row 1: b's loss only
    assert out.terms["hybrid"] == pytest.approx(out.terms["hybrid/a"] + out.terms["hybrid/b"])
