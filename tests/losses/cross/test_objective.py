"""The objective on a CrossSignal: chunks of whole groups through the fused output layer, vs plain autograd."""
import pytest
import torch

from kdistill.losses import DenseSignal, build_objective
from kdistill.losses.cross.alignment import identity_pairs
from kdistill.losses.cross.groups import CrossSignal, group_logprobs, hybrid, uld
from kdistill.losses.cross.objective import group_chunks

from ..references import logits

B, T, D, VS, VT = 2, 6, 5, 13, 11
# group of each student row (-1: not in the mask); groups are numbered across the batch
GROUP_OF = torch.tensor([[0, 0, 1, 2, 2, 2], [-1, 3, 4, 4, 4, -1]])
PAIRS = (torch.tensor([0, 2, 3, 5, 8, 9, 12]), torch.tensor([4, 0, 7, 1, 10, 3, 6]))


def setup(seed=0, vt=VT, pairs=PAIRS):
    g = torch.Generator().manual_seed(seed)
    hidden = logits(B, T, D, seed=seed, scale=1.0).requires_grad_()
    weight = logits(VS, D, seed=seed + 1, scale=1.0).requires_grad_()
    targets = torch.randint(0, VS, (B, T), generator=g)
    n = int(GROUP_OF.max()) + 1
    signal = CrossSignal(DenseSignal(logits=logits(n, vt, seed=seed + 2)), -torch.rand(n, generator=g,
                         dtype=torch.float64), torch.randint(0, vt, (n,), generator=g), GROUP_OF.reshape(-1),
                         *pairs, VS)
    return hidden, weight, targets, GROUP_OF >= 0, signal


def reference(hidden, weight, targets, mask, signal, terms, num_tokens):
    """Each group written out from the full (B, T, V) logits: its rows, their targets, its teacher row."""
    lp = (hidden @ weight.T).log_softmax(-1).reshape(-1, VS)
    flat_t, groups = targets.reshape(-1), signal.group_of
    total = 0.0
    for g in range(int(groups.max()) + 1):
        rows = (groups == g).nonzero().squeeze(-1)
        later = lp[rows[1:], flat_t[rows[1:]]].sum()
        s = group_logprobs(lp[rows[:1]], flat_t[rows[:1]], later[None])
        t = group_logprobs(signal.teacher.logits[g:g + 1].log_softmax(-1), signal.teacher_first[g:g + 1],
                           signal.teacher_rest[g:g + 1])
        for term in terms:
            if term["kind"] == "hybrid":
                total = total + term["weight"] * hybrid(s, t, flat_t[rows[:1]], signal.teacher_first[g:g + 1],
                                                        signal.student_pairs, signal.teacher_pairs, top_k=5).sum()
            elif term["kind"] == "uld":
                total = total + term["weight"] * uld(s, t, 5).sum()
    ce = -lp[mask.reshape(-1).nonzero().squeeze(-1), flat_t[mask.reshape(-1)]].sum()
    ce_weight = sum(t["weight"] for t in terms if t["kind"] == "ce")
    return (total + ce_weight * ce) / num_tokens


TERMS = [{"kind": "hybrid", "weight": 1.0, "top_k": 5}, {"kind": "uld", "weight": 0.5, "top_k": 5},
         {"kind": "ce", "weight": 0.25}]


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 100])
def test_chunks_of_groups_give_the_plain_loss_and_gradients(chunk_size):
    hidden, weight, targets, mask, signal = setup()
    objective = build_objective(TERMS, t2_scale=False, chunk_size=chunk_size)
    num_tokens = 11  # the optimizer step's global count (more than this batch's 10)
    out = objective(hidden, weight, signal, targets, mask, num_tokens)
    want = reference(hidden, weight, targets, mask, signal, TERMS, num_tokens)
    torch.testing.assert_close(out.loss, want, rtol=1e-10, atol=1e-12)
    got_grads = torch.autograd.grad(out.loss, [hidden, weight])
    want_grads = torch.autograd.grad(want, [hidden, weight])
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    assert set(out.terms) == {"hybrid", "uld", "ce"} and out.terms["uld"] > 0


def test_one_tokenizer_cross_signal_equals_plain_forward_kl():
    """Every row its own group, pairs id with id: hybrid on the CrossSignal is forward_kl on the dense one."""
    g = torch.Generator().manual_seed(4)
    hidden = logits(B, T, D, seed=4, scale=1.0).requires_grad_()
    weight = logits(VS, D, seed=5, scale=1.0).requires_grad_()
    targets = torch.randint(0, VS, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, -2:] = False
    teacher = logits(B, T, VS, seed=6)
    rows = mask.reshape(-1).nonzero().squeeze(-1)
    group_of = torch.full((B * T,), -1)
    group_of[rows] = torch.arange(len(rows))
    signal = CrossSignal(DenseSignal(logits=teacher.reshape(-1, VS)[rows]), torch.zeros(len(rows), dtype=torch.float64),
                         targets.reshape(-1)[rows], group_of, *identity_pairs(VS, VS), VS)
    cross = build_objective([{"kind": "hybrid", "temperature": 2.0}], chunk_size=3)
    plain = build_objective([{"kind": "forward_kl", "temperature": 2.0}], chunk_size=3)
    a = cross(hidden, weight, signal, targets, mask, len(rows))
    b = plain(hidden, weight, DenseSignal(logits=teacher), targets, mask, len(rows))
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-10, atol=1e-12)
    for x, y in zip(torch.autograd.grad(a.loss, [hidden, weight]), torch.autograd.grad(b.loss, [hidden, weight])):
        torch.testing.assert_close(x, y, rtol=1e-8, atol=1e-10)


def test_cross_kinds_on_a_plain_signal_are_the_token_level_losses():
    """A same-tokenizer run given a cross loss: hybrid is its divergence, uld the sorted token distributions."""
    hidden, weight, targets, mask, _ = setup()
    teacher = DenseSignal(logits=logits(B, T, VS, seed=9))
    a = build_objective([{"kind": "hybrid", "divergence": "reverse_kl"}])(hidden, weight, teacher, targets, mask, 10)
    b = build_objective([{"kind": "reverse_kl"}])(hidden, weight, teacher, targets, mask, 10)
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-12, atol=1e-12)
    u = build_objective([{"kind": "uld", "top_k": 4}])(hidden, weight, teacher, targets, mask, 10)
    rows = mask.reshape(-1)
    s = (hidden @ weight.T).reshape(-1, VS)[rows].log_softmax(-1)
    t = teacher.logits.reshape(-1, VS)[rows].log_softmax(-1)
    torch.testing.assert_close(u.loss, uld(s, t, 4).sum() / 10, rtol=1e-10, atol=1e-12)


def test_group_chunks_cut_only_between_groups():
    starts = torch.tensor([1, 0, 1, 1, 0, 0, 0, 1, 1, 0], dtype=torch.bool)
    assert group_chunks(starts, 3) == [slice(0, 3), slice(3, 7), slice(7, 10)]
    assert group_chunks(starts, 100) == [slice(0, 10)]
    assert group_chunks(starts, 1) == [slice(0, 2), slice(2, 3), slice(3, 7), slice(7, 8), slice(8, 10)]
