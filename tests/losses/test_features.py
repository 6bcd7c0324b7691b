"""Feature losses against plain float64 references: hidden_mse/hidden_cosine, attention maps on sampled rows
(vs full eager attention of a real LLaMA block), GQA head matching, relation heads, row sampling."""
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_llama

from kdistill.losses import features as FT
from kdistill.models.activations import capture


def rand(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).requires_grad_(True)


@pytest.mark.parametrize("n,ds", [(1, 1), (7, 5), (13, 33)])
def test_hidden_terms_match_the_textbook_formulas(n, ds):
    s, t = rand(n, ds, seed=1), rand(n, ds, seed=2)
    for fn, ref in [(FT.hidden_mse, lambda a, b: ((a - b) ** 2).sum(-1) / a.shape[-1]),
                    (FT.hidden_cosine, lambda a, b: 1 - F.cosine_similarity(a, b, dim=-1, eps=0))]:
        got, want = fn(s, t), ref(s, t)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        g_got = torch.autograd.grad(got.sum(), (s, t))
        g_want = torch.autograd.grad(want.sum(), (s, t))
        for a, b in zip(g_got, g_want):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_hidden_terms_upcast_half_precision_and_survive_zero_vectors():
    s = torch.zeros(3, 4, dtype=torch.bfloat16, requires_grad=True)
    value = FT.hidden_cosine(s, torch.ones(3, 4, dtype=torch.bfloat16))
    assert value.dtype == torch.float32 and torch.equal(value, torch.ones(3))
    value.sum().backward()
    assert torch.isfinite(s.grad.float()).all()


def reference_attention(q, k, cos, sin, heads, kv_heads, attention_mask):
    """Full eager attention probabilities, as transformers computes them. Shapes: -> (B, H, T, T)"""
    b, t, _ = q.shape
    qh = q.view(b, t, heads, -1).transpose(1, 2)
    kh = k.view(b, t, kv_heads, -1).transpose(1, 2)

    def rope(x):
        half = x.shape[-1] // 2
        return x * cos[:, None] + torch.cat((-x[..., half:], x[..., :half]), -1) * sin[:, None]

    qh, kh = rope(qh), rope(kh).repeat_interleave(heads // kv_heads, 1)
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1])
    allowed = torch.ones(t, t, dtype=torch.bool).tril()[None, None] & attention_mask.bool()[:, None, None, :]
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1)


def qk_inputs(b, t, heads, kv_heads, hd, seed):
    q, k = rand(b, t, heads * hd, seed=seed), rand(b, t, kv_heads * hd, seed=seed + 1)
    angle = torch.arange(t, dtype=torch.float64)[:, None] * torch.rand(hd // 2, dtype=torch.float64)[None]
    angle = torch.cat([angle, angle], -1)[None].expand(b, -1, -1)
    return {"q": q, "k": k, "cos": angle.cos(), "sin": angle.sin(), "heads": heads, "kv_heads": kv_heads,
            "scaling": hd ** -0.5, "head_dim": hd}


def full_kl(student, teacher, rows, attention_mask):
    """The plain formula: whole (B, H, T, T) maps, group means, KL of the sampled rows, mean over heads."""
    ps = reference_attention(student["q"], student["k"], student["cos"], student["sin"], student["heads"],
                             student["kv_heads"], attention_mask)
    pt = reference_attention(teacher["q"], teacher["k"], teacher["cos"], teacher["sin"], teacher["heads"],
                             teacher["kv_heads"], attention_mask)
    b, _, t, _ = pt.shape
    if student["heads"] != teacher["heads"]:  # each student head against its KV group's mean
        pt = pt.view(b, teacher["kv_heads"], -1, t, t).mean(2)
        pt = pt.repeat_interleave(student["heads"] // student["kv_heads"], 1)
    idx = rows[:, None, :, None].expand(-1, ps.shape[1], -1, t)
    ps, pt = ps.gather(2, idx), pt.gather(2, idx)
    return kl_rows(ps, pt).mean(1)


def kl_rows(ps, pt):
    """sum_j p log(p / q) over keys with p > 0 (masked keys hold exact zeros, kept out of the logs)."""
    some = pt > 0
    return torch.where(some, pt * (pt.where(some, 1.0).log() - ps.where(some, 1.0).log()), 0.0).sum(-1)


@pytest.mark.parametrize("b,t,hs,kvs,ht,kvt,hd", [(2, 7, 4, 2, 6, 2, 6), (1, 9, 3, 3, 3, 3, 4),
                                                 (3, 5, 2, 1, 8, 1, 2)])
def test_attention_map_equals_full_attention_head_for_head_or_with_group_means(b, t, hs, kvs, ht, kvt, hd):
    student, teacher = qk_inputs(b, t, hs, kvs, hd, seed=3), qk_inputs(b, t, ht, kvt, hd, seed=7)
    teacher["cos"], teacher["sin"] = student["cos"], student["sin"]
    attention_mask = torch.ones(b, t, dtype=torch.long)
    attention_mask[0, -2:] = 0  # right padding
    mask = attention_mask.bool()
    rows, weight = FT.sample_rows(mask, 3, 0.4)
    got = FT.attention_map(student, teacher, rows, attention_mask)
    want = full_kl(student, teacher, rows, attention_mask)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    inputs = (student["q"], student["k"], teacher["q"])
    for a, c in zip(torch.autograd.grad((got * weight).sum(), inputs),
                    torch.autograd.grad((want * weight).sum(), inputs)):
        torch.testing.assert_close(a, c, rtol=1e-9, atol=1e-12)


def test_relation_heads_when_the_kv_groups_differ():
    """4 student heads (2 groups) vs 6 teacher heads (3 groups): gcd = 2 relation heads, each the
    concatenation of its query heads' q and k (scaled by the wider head), on both sides."""
    student, teacher = qk_inputs(2, 6, 4, 2, 4, seed=11), qk_inputs(2, 6, 6, 3, 4, seed=13)
    attention_mask = torch.ones(2, 6, dtype=torch.long)
    rows, _ = FT.sample_rows(attention_mask.bool(), 6)
    got = FT.attention_map(student, teacher, rows, attention_mask)

    def relation(side, heads_per):
        b, t = side["q"].shape[:2]
        kv = side["k"].view(b, t, side["kv_heads"], -1).repeat_interleave(side["heads"] // side["kv_heads"], 2)
        q = side["q"].view(b, t, side["heads"], -1)

        def rope(x):
            half = x.shape[-1] // 2
            return x * side["cos"][:, :, None] + torch.cat((-x[..., half:], x[..., :half]), -1) * side["sin"][:, :, None]

        q, kv = rope(q).reshape(b, t, 2, -1), rope(kv).reshape(b, t, 2, -1)  # 2 relation heads
        scores = torch.einsum("bqad,bkad->baqk", q, kv) / math.sqrt(q.shape[-1])
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        return scores.masked_fill(~causal, float("-inf")).softmax(-1)

    ps, pt = relation(student, 2), relation(teacher, 3)
    want = kl_rows(ps, pt).mean(1)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_recomputed_rows_equal_the_models_own_eager_attention():
    """q·k from a real block's q_proj/k_proj and rotary embeddings (hooks) gives exactly the probabilities
    transformers' eager attention returns, row for row (GQA: 4 heads, 2 KV groups)."""
    model = tiny_llama(300, seed=0, attn_implementation="eager").double()
    ids = torch.randint(0, 300, (2, 11), generator=torch.Generator().manual_seed(0))
    am = torch.ones_like(ids)
    with torch.no_grad(), capture(model, {1: ("qk",)}) as found:
        out = model(input_ids=ids, attention_mask=am, output_attentions=True)
    qk = found[1]["qk"]
    rows = torch.tensor([[0, 4, 10], [2, 3, 9]])
    scores = FT.row_scores(qk["q"], qk["k"], qk["cos"], qk["sin"], rows, qk["heads"], qk["kv_heads"], qk["scaling"])
    probs = FT.masked_logprobs(scores, FT.key_mask(rows, am)).exp()
    want = out.attentions[1].gather(2, rows[:, None, :, None].expand(-1, 4, -1, 11))
    torch.testing.assert_close(probs, want, rtol=1e-6, atol=1e-7)  # transformers' softmax runs in fp32
    other = FT.masked_logprobs(scores.flip(1), FT.key_mask(rows, am)).exp()  # heads swapped: far off
    assert (other - want).abs().max() > 1e-3


def test_sampled_rows_depend_on_each_sequence_only_and_weigh_to_its_count():
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(6, 40, generator=g) > 0.3
    mask[2] = False
    mask[3, :5] = True
    mask[3, 5:] = False
    rows, weight = FT.sample_rows(mask, 8, 0.37)
    for i in range(6):
        picked = rows[i][weight[i] > 0]
        assert mask[i, picked].all() and len(set(picked.tolist())) == len(picked)
        assert float(weight[i].sum()) == pytest.approx(float(mask[i].sum()))
    top, _ = FT.sample_rows(mask[:3], 8, 0.37)
    bottom, _ = FT.sample_rows(mask[3:], 8, 0.37)
    assert torch.equal(torch.cat([top, bottom]), rows)  # a micro-batch split picks the same rows


def test_a_padding_slot_gives_no_nan():
    student, teacher = qk_inputs(1, 5, 2, 1, 4, seed=1), qk_inputs(1, 5, 2, 1, 4, seed=2)
    attention_mask = torch.tensor([[0, 0, 1, 1, 1]])  # left padding: slot rows point at position 0
    rows, weight = FT.sample_rows(torch.tensor([[False, False, True, True, False]]), 4)
    value = (FT.attention_map(student, teacher, rows, attention_mask) * weight).sum()
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(student["q"].grad).all()
