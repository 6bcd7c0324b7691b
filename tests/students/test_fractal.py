"""The fractal student against a reference written with torch's complex numbers, plus the HF contract."""
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM

from kdistill.base.errors import ConfigError
from kdistill.students.fractal import (
    FractalConfig,
    FractalForCausalLM,
    core_parameter_count,
    init_embeddings_from_teacher,
    register,
)
from tests.helpers import tiny_tokenizer


def tiny(seed: int = 0, **overrides) -> FractalForCausalLM:
    cfg = dict(vocab_size=40, hidden_size=16, intermediate_size=24, num_heads=2, num_steps=3,
               max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    cfg.update(overrides)
    torch.manual_seed(seed)
    return FractalForCausalLM(FractalConfig(**cfg)).eval()


def randomize(model: FractalForCausalLM) -> None:
    """Non-trivial gains and biases, so that the reference check sees every parameter."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if "norm" in name else 0.0))


def as_complex(x: torch.Tensor) -> torch.Tensor:
    re, im = x.chunk(2, dim=-1)
    return torch.complex(re, im)


def reference_norm(z: torch.Tensor, gain: torch.Tensor, eps: float) -> torch.Tensor:
    """g ⊙ Z / rms(Z), rms over the 2N real numbers."""
    return gain * z / torch.sqrt(z.abs().pow(2).mean(-1, keepdim=True) / 2 + eps)


def reference_step(block, z: torch.Tensor, mask: torch.Tensor, cfg: FractalConfig) -> torch.Tensor:
    """One application of the block in complex arithmetic, straight from the module docstring. z (B, T, N)."""
    def lin(layer, x):
        out = x @ torch.complex(layer.weight_re, layer.weight_im).T
        return out if layer.bias is None else out + as_complex(layer.bias)

    split = lambda f, x: torch.complex(f(x.real), f(x.imag))  # noqa: E731
    u = reference_norm(z, block.norm.weight, cfg.rms_norm_eps)
    b, t, n = z.shape
    h, d = cfg.num_heads, n // cfg.num_heads
    heads = lambda x: x.view(b, t, h, d).transpose(1, 2)  # noqa: E731  (B, H, T, d)
    pos = (mask.cumsum(-1) - 1).clamp(min=0).double()
    angle = pos[:, None, :, None] * cfg.rope_base ** (-torch.arange(d) / d)  # (B, 1, T, d)
    phase = torch.polar(torch.ones_like(angle), angle)
    q, k, v = heads(lin(block.q, u)) * phase, heads(lin(block.k, u)) * phase, heads(lin(block.v, u))
    scores = torch.einsum("bhtj,bhsj->bhts", q, k.conj()).real / math.sqrt(2 * d)
    padded_keys_hidden = mask.bool()[:, None, None, :] | torch.eye(t, dtype=torch.bool)
    allowed = torch.ones(t, t, dtype=torch.bool).tril() & padded_keys_hidden
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    attended = torch.einsum("bhts,bhsj->bhtj", probs.to(v.dtype), v).transpose(1, 2).reshape(b, t, n)
    layer = z + lin(block.o, attended) + lin(block.down, split(F.gelu, lin(block.up, u)))
    return (1 - cfg.alpha) * z + cfg.alpha * split(torch.tanh, layer)


@pytest.mark.parametrize("vocab_size", [320, 1000])
def test_core_parameter_count_is_in_range_and_independent_of_steps(vocab_size):
    counts = set()
    for steps in (1, 10):
        model = FractalForCausalLM(FractalConfig(vocab_size=vocab_size, num_steps=steps))
        counts.add((core_parameter_count(model), sum(p.numel() for p in model.parameters())))
    assert len(counts) == 1
    (core, total), = counts
    assert 200_000 <= core <= 500_000
    assert total == core + vocab_size * 256  # tied head: the embedding is the only other tensor


@pytest.mark.parametrize("steps", [1, 3])
def test_steps_match_the_complex_reference(steps):
    model = tiny(num_steps=steps, alpha=0.3).double()
    randomize(model)
    cfg = model.config
    ids = torch.randint(3, cfg.vocab_size, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding in the second row
    out = model(ids, attention_mask=mask, output_hidden_states=True)

    z = as_complex(model.embed_tokens.weight[ids]) * math.sqrt(cfg.hidden_size)
    for n in range(steps):
        z = reference_step(model.block, z, mask, cfg)
        if n < steps - 1:
            torch.testing.assert_close(out.hidden_states[n + 1], torch.cat([z.real, z.imag], -1))
    h = reference_norm(z, model.norm.weight, cfg.rms_norm_eps)
    logits = (h[:, :, None, :] * as_complex(model.embed_tokens.weight).conj()).sum(-1).real  # Re⟨e_v, h⟩
    assert len(out.hidden_states) == steps + 1
    torch.testing.assert_close(out.logits, logits)


def test_causal_but_mixing_across_positions():
    model = tiny()
    ids = torch.randint(3, 40, (1, 10))
    changed = ids.clone()
    changed[0, 6] = (ids[0, 6] + 1 - 3) % 37 + 3
    a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :6], b[:, :6], rtol=0, atol=0)
    assert (a[:, 7:] - b[:, 7:]).abs().amax() > 1e-4  # later positions see token 6: not a bigram table


def test_left_padding_gives_the_unpadded_logits():
    model = tiny()
    ids = torch.randint(3, 40, (1, 6))
    padded = torch.cat([torch.full((1, 3), 2), ids], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 6, dtype=torch.long)], 1)
    torch.testing.assert_close(model(padded, attention_mask=mask).logits[:, 3:], model(ids).logits)


def test_last_hidden_state_is_the_head_input():
    model = tiny()
    out = model(torch.randint(0, 40, (2, 5)), output_hidden_states=True)
    torch.testing.assert_close(out.hidden_states[-1] @ model.get_output_embeddings().weight.T, out.logits)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_gradients_reach_every_parameter():
    model = tiny().train()
    randomize(model)
    ids = torch.randint(0, 40, (2, 8))
    loss = model(ids, attention_mask=torch.ones_like(ids), labels=ids).loss
    expected = F.cross_entropy(model(ids).logits[:, :-1].reshape(-1, 40), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_save_load_through_auto_classes(tmp_path):
    model = tiny(num_steps=2)
    randomize(model)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    register()
    register()  # idempotent
    assert AutoConfig.from_pretrained(tmp_path).num_steps == 2
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, FractalForCausalLM)
    assert loaded.lm_head.weight is loaded.embed_tokens.weight
    ids = torch.randint(0, 40, (2, 9))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_generate_greedy_sampled_and_left_padded_batch():
    tok = tiny_tokenizer()
    tok.padding_side = "left"
    model = tiny(vocab_size=len(tok))
    prompts = ["Once upon a time", "The king"]
    batch = tok(prompts, return_tensors="pt", padding=True)
    greedy = model.generate(**batch, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert greedy.shape == (2, batch["input_ids"].shape[1] + 5)
    for row, prompt in zip(greedy, prompts):  # each row as if generated alone
        alone = tok(prompt, return_tensors="pt")
        single = model.generate(**alone, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
        assert row[-5:].tolist() == single[0, -5:].tolist()
    torch.manual_seed(0)
    sampled = model.generate(**batch, max_new_tokens=4, do_sample=True, top_k=0, pad_token_id=tok.pad_token_id)
    assert sampled.shape == (2, batch["input_ids"].shape[1] + 4)


@pytest.mark.parametrize("teacher_width", [48, 12])
def test_teacher_embedding_init_keeps_similarity_structure(teacher_width):
    torch.manual_seed(0)
    vocab, width = 300, 16
    teacher = torch.randn(vocab, 10) @ torch.randn(10, teacher_width) + 0.3 * torch.randn(vocab, teacher_width)
    model = tiny(vocab_size=vocab, hidden_size=width)
    random_weight = model.embed_tokens.weight.detach().clone()
    weight = init_embeddings_from_teacher(model, teacher)
    assert weight.shape == (vocab, width) and model.lm_head.weight is weight
    assert weight.pow(2).mean().sqrt().item() == pytest.approx(model.config.initializer_range, rel=1e-4)

    def cosine_correlation(student):
        rows = torch.randperm(vocab)[:100]
        pairs = torch.triu_indices(100, 100, 1)
        sims = [F.normalize(w[rows], dim=-1) @ F.normalize(w[rows], dim=-1).T for w in (teacher, student)]
        return torch.corrcoef(torch.stack([s[pairs[0], pairs[1]] for s in sims]))[0, 1].item()

    assert cosine_correlation(weight.detach()) > 0.9
    assert abs(cosine_correlation(random_weight)) < 0.2


def test_config_rejects_widths_that_do_not_split_into_heads():
    with pytest.raises(ConfigError, match="num_heads"):
        FractalConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ConfigError, match="alpha"):
        FractalConfig(alpha=0.0)


@pytest.mark.parametrize("padded", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(padded):
    ids = torch.randint(3, 40, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :2] = 0 if padded else 1

    def grads(checkpointed: bool) -> tuple[dict, int]:
        model = tiny(seed=4)
        randomize(model)
        if checkpointed:
            model.gradient_checkpointing_enable()
        calls = []
        model.block.register_forward_pre_hook(lambda *_: calls.append(1))
        model.train()
        model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
        return {name: p.grad for name, p in model.named_parameters()}, len(calls)

    (plain, plain_calls), (checkpointed, calls) = grads(False), grads(True)
    assert (plain_calls, calls) == (3, 6)  # three steps, each run again in the backward pass
    assert plain.keys() == checkpointed.keys() and all(g is not None for g in checkpointed.values())
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)
