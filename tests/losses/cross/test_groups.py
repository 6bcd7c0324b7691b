"""uld and hybrid on group distributions, against plain float64 references written out with probabilities."""
import pytest
import torch

from kdistill.losses.cross.alignment import identity_pairs
from kdistill.losses.cross.groups import group_logprobs, hybrid, uld
from kdistill.losses.divergences import forward_kl, jsd

from ..references import logits

G, VS, VT = 7, 13, 11  # odd shapes: groups, student and teacher vocabularies


def groups_of(first_logits, first_ids, later):
    return group_logprobs(first_logits.log_softmax(-1), first_ids, later)


def ref_group_probs(first_logits, first_ids, later):
    """p(v) for v != a, p(a)·Π, p(a)·(1 − Π), in probabilities. Shapes: (g, V), (g,), (g,) -> (g, V + 1)"""
    p = first_logits.softmax(-1)
    rows = []
    for i in range(p.shape[0]):
        a, prod = int(first_ids[i]), later[i].exp()
        row = torch.cat([p[i, :a], (p[i, a] * prod)[None], p[i, a + 1:], (p[i, a] * (1 - prod))[None]])
        rows.append(row)
    return torch.stack(rows)


def ref_uld(q, p, k):
    qs, ps = q.sort(-1, descending=True).values[..., :k], p.sort(-1, descending=True).values[..., :k]
    n = max(qs.shape[-1], ps.shape[-1])
    qs = torch.nn.functional.pad(qs, (0, n - qs.shape[-1]))
    ps = torch.nn.functional.pad(ps, (0, n - ps.shape[-1]))
    return (qs - ps).abs().sum(-1)


def ref_hybrid(q, p, a_s, a_t, pairs, k):
    """The hybrid loss group by group at T = 1, from probabilities and Python sets (forward KL part)."""
    out = []
    for g in range(q.shape[0]):
        kept = [(i, j) for i, j in zip(pairs[0].tolist(), pairs[1].tolist()) if i != a_s[g] and j != a_t[g]]
        s_in = {i for i, _ in kept} | {int(a_s[g])}
        t_in = {j for _, j in kept} | {int(a_t[g])}
        qa = torch.stack([q[g, i] for i, _ in kept] + [q[g, a_s[g]]])
        pa = torch.stack([p[g, j] for _, j in kept] + [p[g, a_t[g]]])
        q_other, p_other = 1 - qa.sum(), 1 - pa.sum()
        if q_other > 1e-12 or p_other <= 1e-12:
            qa, pa = torch.cat([qa, q_other[None]]), torch.cat([pa, p_other.clamp(min=0)[None]])
        else:  # only the teacher has mass outside: drop it, renormalise the teacher
            pa = pa / pa.sum()
        qa = qa / qa.sum()
        kl = sum(pi * (pi.log() - qi.log()) for pi, qi in zip(pa, qa) if pi > 0)
        q_rest = torch.stack([q[g, i] for i in range(q.shape[1]) if i not in s_in])
        p_rest = torch.stack([p[g, j] for j in range(p.shape[1]) if j not in t_in])
        out.append(kl + ref_uld(q_rest, p_rest, k))
    return torch.stack(out)


def inputs(seed=0, vs=VS, vt=VT):
    s_logits = logits(G, vs, seed=seed).requires_grad_()
    t_logits = logits(G, vt, seed=seed + 1)
    g = torch.Generator().manual_seed(seed)
    s_first, t_first = torch.randint(0, vs, (G,), generator=g), torch.randint(0, vt, (G,), generator=g)
    s_later = (-torch.rand(G, generator=g, dtype=torch.float64) * 2).requires_grad_()
    t_later = -torch.rand(G, generator=g, dtype=torch.float64) * 2
    with torch.no_grad():
        s_later[0] = 0.0  # a one-token group on the student side: empty bucket
    return s_logits, t_logits, s_first, t_first, s_later, t_later


PAIRS = (torch.tensor([0, 2, 3, 5, 8, 9, 12]), torch.tensor([4, 0, 7, 1, 10, 3, 6]))


def test_group_distribution_is_the_product_of_conditionals():
    s_logits, _, s_first, _, s_later, _ = inputs()
    got = groups_of(s_logits, s_first, s_later).exp()
    torch.testing.assert_close(got, ref_group_probs(s_logits, s_first, s_later), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got.sum(-1), torch.ones(G, dtype=torch.float64))


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.7])
def test_hybrid_with_one_tokenizer_is_the_plain_divergence(temperature):
    s_logits, t_logits, ids, _, _, _ = inputs(vt=VS)
    zero = torch.zeros(G, dtype=torch.float64)
    pairs = identity_pairs(VS, VS)
    got = hybrid(groups_of(s_logits, ids, zero), groups_of(t_logits, ids, zero), ids, ids, *pairs, temperature)
    want = forward_kl(s_logits, t_logits, temperature)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    g1, = torch.autograd.grad(got.sum(), s_logits)
    g2, = torch.autograd.grad(want.sum(), s_logits)
    torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-12)
    same = hybrid(groups_of(t_logits, ids, zero), groups_of(t_logits, ids, zero), ids, ids, *pairs, temperature)
    assert same.abs().max() < 1e-12
    js = hybrid(groups_of(s_logits, ids, zero), groups_of(t_logits, ids, zero), ids, ids, *pairs, temperature,
                "jsd", beta=0.3)
    torch.testing.assert_close(js, jsd(s_logits, t_logits, temperature, beta=0.3), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("top_k", [3, 100])
def test_uld_matches_sorted_probability_reference(top_k):
    s_logits, t_logits, s_first, t_first, s_later, t_later = inputs()
    q, p = ref_group_probs(s_logits, s_first, s_later), ref_group_probs(t_logits, t_first, t_later)
    got = uld(groups_of(s_logits, s_first, s_later), groups_of(t_logits, t_first, t_later), top_k)
    want = ref_uld(q, p, top_k)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got.sum(), [s_logits, s_later]),
                    torch.autograd.grad(want.sum(), [s_logits, s_later])):
        torch.testing.assert_close(a[1:], b[1:], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("top_k", [4, 100])
def test_hybrid_matches_the_written_out_reference(top_k):
    s_logits, t_logits, s_first, t_first, s_later, t_later = inputs(seed=3)
    s_first[1], t_first[1] = PAIRS[0][2], PAIRS[1][2]  # a group whose first tokens are a matched pair
    q, p = ref_group_probs(s_logits, s_first, s_later), ref_group_probs(t_logits, t_first, t_later)
    got = hybrid(groups_of(s_logits, s_first, s_later), groups_of(t_logits, t_first, t_later), s_first, t_first,
                 *PAIRS, top_k=top_k)
    want = ref_hybrid(q, p, s_first, t_first, PAIRS, top_k)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
    # later = 0 exactly is a one-token group (no later token to differentiate): its bucket is a constant 0
    for a, b in zip(torch.autograd.grad(got.sum(), [s_logits, s_later]),
                    torch.autograd.grad(want.sum(), [s_logits, s_later])):
        torch.testing.assert_close(a[1:], b[1:], rtol=1e-7, atol=1e-9)


def test_no_shared_strings_is_uld():
    s_logits, t_logits, s_first, t_first, s_later, t_later = inputs()
    sg, tg = groups_of(s_logits, s_first, s_later), groups_of(t_logits, t_first, t_later)
    none = (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    torch.testing.assert_close(hybrid(sg, tg, s_first, t_first, *none, top_k=5), uld(sg, tg, 5))


@pytest.mark.parametrize("side", ["student", "teacher"])
def test_losses_do_not_depend_on_the_order_of_either_vocabulary(side):
    s_logits, t_logits, s_first, t_first, s_later, t_later = inputs(seed=5)
    before = [hybrid(groups_of(s_logits, s_first, s_later), groups_of(t_logits, t_first, t_later), s_first,
                     t_first, *PAIRS, top_k=6),
              uld(groups_of(s_logits, s_first, s_later), groups_of(t_logits, t_first, t_later), 6)]
    v = VS if side == "student" else VT
    perm = torch.randperm(v, generator=torch.Generator().manual_seed(1))  # new id of old id i: inverse[i]
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(v)
    if side == "student":
        s_logits, s_first, pairs = s_logits[:, perm], inverse[s_first], (inverse[PAIRS[0]], PAIRS[1])
    else:
        t_logits, t_first, pairs = t_logits[:, perm], inverse[t_first], (PAIRS[0], inverse[PAIRS[1]])
    after = [hybrid(groups_of(s_logits, s_first, s_later), groups_of(t_logits, t_first, t_later), s_first,
                    t_first, *pairs, top_k=6),
             uld(groups_of(s_logits, s_first, s_later), groups_of(t_logits, t_first, t_later), 6)]
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
