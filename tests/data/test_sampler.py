"""sampler.sample_batch: greedy equals HF generate while finished rows leave the batch, seeded sampling
repeats, the nucleus filter matches a plain reference, and caches it cannot slice fall back to generate."""
import pytest
import torch

from kdistill.data import sampler as S
from tests.helpers import tiny_teacher

VOCAB, PAD, NEW = 100, 0, 12
PROMPTS = [[5, 17, 33], [8, 9, 10, 11, 12, 13, 14], [42], [60, 61, 62, 63, 64]]  # lengths 3, 7, 1, 5


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def model(request):
    """Weights wider than the default (std 0.5, not 0.02) so that the next token depends on the context and
    its positions, not only on the last token (gpt2's positions are absolute, LLaMA's and Qwen2's relative)."""
    m = tiny_teacher(request.param, VOCAB, seed=3, initializer_range=0.5)
    m.generation_config.eos_token_id = None  # generate stops only where a test says
    return m


def hf_greedy(model, prompts, eos, new=NEW):
    """HF generate(do_sample=False) on the left-padded batch, trimmed after the first EOS."""
    width = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=PAD,
                         eos_token_id=eos)
    rows = [r[width:].tolist() for r in out]
    return [r[:r.index(eos) + 1] if eos in r else r for r in rows]


def stopping_eos(rows):
    """A token that one row emits first at its step 1..5 and another row never emits."""
    for row in rows:
        for t in row[1:NEW // 2]:
            if t != PAD and row.index(t) > 0 and any(t not in other for other in rows):
                return t
    pytest.skip("the greedy rows share all their early tokens")


def test_greedy_equals_generate_while_rows_leave(model):
    free = S.sample_batch(model, PROMPTS, PAD, None, NEW, 0.0, 1.0)
    assert free == hf_greedy(model, PROMPTS, None) and all(len(r) == NEW for r in free)
    eos = stopping_eos(free)
    rows = S.sample_batch(model, PROMPTS, PAD, eos, NEW, 0.0, 1.0)
    assert rows == hf_greedy(model, PROMPTS, eos)
    stopped = [i for i, r in enumerate(rows) if len(r) < NEW]
    assert stopped and len(stopped) < len(rows)        # some rows left early, others ran on
    for i, (r, f) in enumerate(zip(rows, free)):
        if i in stopped:
            assert r[-1] == eos and r == f[:len(r)]     # stopped at its first EOS, EOS kept
        else:
            assert r == f                               # unaffected by the rows that left


def test_the_batch_shrinks_at_each_finished_row(model, monkeypatch):
    eos = stopping_eos(S.sample_batch(model, PROMPTS, PAD, None, NEW, 0.0, 1.0))
    sizes, forward = [], model.forward

    def counting(*args, **kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", counting)
    rows = S.sample_batch(model, PROMPTS, PAD, eos, NEW, 0.0, 1.0)
    running = [sum(len(r) > step for r in rows) for step in range(NEW)]  # rows still running at each step
    assert sizes == running and sizes[-1] < len(PROMPTS)


def test_same_seed_same_samples_other_seed_other_samples(model):
    def run(seed):
        torch.manual_seed(seed)
        return S.sample_batch(model, PROMPTS, PAD, 7, NEW, 1.5, 0.95)

    assert run(11) == run(11)
    assert run(11) != run(12)
    assert all(0 < len(r) <= NEW for r in run(13))


def reference_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Per row in plain Python: walk the tokens by probability (lower id first among ties) and keep them
    until the kept ones hold top_p."""
    out = torch.full_like(logits, float("-inf"))
    for r, row in enumerate(logits):
        probs = row.softmax(-1).tolist()
        held = 0.0
        for i in sorted(range(len(probs)), key=lambda i: (-probs[i], i)):
            if held >= top_p:
                break
            out[r, i] = row[i]
            held += probs[i]
    return out


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (5, 13), (2, 101)])
@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.95, 1.0])
def test_top_p_matches_a_plain_reference(shape, top_p):
    g = torch.Generator().manual_seed(shape[1])
    logits = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).round(decimals=0)  # many ties
    got = S.top_p_filter(logits, top_p)
    assert torch.equal(got, reference_top_p(logits, top_p))
    assert (got == logits.max(-1, keepdim=True).values).any(-1).all()  # the top token always stays
    if top_p == 1.0:
        assert torch.equal(got, logits)


def test_top_p_ties_and_the_top_token():
    logits = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 5.0, 0.0, 0.0]], dtype=torch.float64)
    ninf = float("-inf")
    assert torch.equal(S.top_p_filter(logits, 0.5), torch.tensor([[1.0, 1.0, ninf, ninf], [ninf, 5.0, ninf, ninf]],
                                                                  dtype=torch.float64))
    assert torch.equal(S.top_p_filter(logits, 1e-9)[0], torch.tensor([1.0, ninf, ninf, ninf], dtype=torch.float64))
    half = torch.zeros(1, 2, dtype=torch.float64)  # two tokens of exactly 0.5: the first alone reaches top_p 0.5
    assert torch.equal(S.top_p_filter(half, 0.5), torch.tensor([[0.0, ninf]], dtype=torch.float64))


def test_a_cache_it_cannot_slice_falls_back_to_generate(monkeypatch):
    """Gemma 3's sliding-window layers are not plain DynamicLayers: generate writes the rows."""
    model = tiny_teacher("gemma3_text", VOCAB, seed=3, initializer_range=0.5)
    model.generation_config.eos_token_id = None
    calls, generate = [], model.generate
    monkeypatch.setattr(model, "generate", lambda *a, **k: calls.append(1) or generate(*a, **k))
    free = S.sample_batch(model, PROMPTS, PAD, None, NEW, 0.0, 1.0)
    assert len(calls) == 1
    assert free == hf_greedy(model, PROMPTS, None)
    eos = free[1][0]  # this tiny Gemma repeats tokens, so stop row 1 at its first one
    model.generation_config.eos_token_id = eos
    rows = S.sample_batch(model, PROMPTS, PAD, eos, NEW, 0.0, 1.0)
    assert len(calls) == 3  # sample_batch, hf_greedy, sample_batch
    assert rows == hf_greedy(model, PROMPTS, eos)
    assert rows[1] == [eos] and all(r == f for r, f in zip(rows, free) if eos not in f)


def test_a_faked_cache_falls_back_too(monkeypatch):
    """Any cache other than a plain DynamicCache (here a subclass) takes the generate path."""
    from transformers.cache_utils import DynamicCache

    class Other(DynamicCache):
        pass

    model = tiny_teacher("llama", VOCAB, seed=3, initializer_range=0.5)
    model.generation_config.eos_token_id = None
    forward = model.forward

    def other_cache(*args, **kwargs):
        out = forward(*args, **kwargs)
        if kwargs.get("cache") is None:  # a prefill: hand back a cache of another type
            out.cache.__class__ = Other
        return out

    monkeypatch.setattr(model, "forward", other_cache)
    calls, generate = [], model.generate
    monkeypatch.setattr(model, "generate", lambda *a, **k: calls.append(1) or generate(*a, **k))
    rows = S.sample_batch(model, PROMPTS, PAD, None, NEW, 0.0, 1.0)
    assert calls == [1] and rows == hf_greedy(model, PROMPTS, None)


@pytest.mark.parametrize("scale", [0.5, 2.0, 6.0])
@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.95])
def test_top_p_fast_path_keeps_the_full_sorts_tokens(scale, top_p, monkeypatch):
    """A vocabulary wider than PREFIX: the topk prefix keeps exactly the tokens the full sort keeps, on
    peaked rows (the prefix is used), flat rows (the whole row is sorted) and rows with many ties."""
    g = torch.Generator().manual_seed(int(scale * 10) + int(top_p * 100))
    vocab = S.PREFIX * 3 + 17
    logits = torch.randn(5, vocab, generator=g) * scale
    logits[3] = logits[3].round()                        # many ties
    logits[4, 100:140] = logits[4].max() + 1             # 40 tied top tokens
    monkeypatch.setattr(S, "PREFIX", vocab)              # the prefix is the whole row: the full sort
    full = S.top_p_filter(logits, top_p)
    monkeypatch.undo()
    fast = S.top_p_filter(logits, top_p)
    assert torch.equal(fast.isfinite(), full.isfinite()) and torch.equal(fast[fast.isfinite()], logits[fast.isfinite()])


def test_top_p_fast_path_skips_the_full_sort_on_peaked_rows(monkeypatch):
    logits = torch.randn(4, S.PREFIX * 4, generator=torch.Generator().manual_seed(0)) * 6
    expected = S.top_p_filter(logits, 0.95)
    monkeypatch.setattr(torch, "sort", lambda *a, **k: pytest.fail("the full vocabulary was sorted"))
    assert torch.equal(S.top_p_filter(logits, 0.95), expected)
    flat = torch.zeros(2, S.PREFIX * 4)                  # the prefix holds 25% < top_p: needs the full sort
    with pytest.raises(pytest.fail.Exception):
        S.top_p_filter(flat, 0.95)
