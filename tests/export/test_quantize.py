"""Weight-only int8/int4: per-weight error bounds, packing, model surgery, and the KL it costs.

Bounds: every weight is within half a quantisation step of the original (|w - w_hat| <= |scale| / 2,
with 1e-6 relative slack for fp32 arithmetic; int4's top code is 7, so weights beyond +7.5 steps are
within one step). On the tiny student (hidden 64, random weights), mean
KL(fp || q) is below 1e-4 nats/token for int8 and below 2e-2 for int4; top-1 agreement, low on
near-flat random logits, is at least 95% and 70%.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM

from kdistill.base.errors import ModelError
from kdistill.export import QuantEmbedding, QuantLinear, kl_per_token, quant_report, quantize_model
from kdistill.export.measure import compare_logits
from kdistill.export.packing import unpack_int4
from kdistill.export.quantize import (
    CLIP_RATIOS,
    dequantize_int4,
    dequantize_int8,
    dequantize_model,
    quantize_int4,
    quantize_int8,
)


def weights(rows=16, cols=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.05
    w[3, 7] = 1.5  # an outlier
    w[5] = 0.0  # an all-zero row
    w[6, :32] = 0.25  # a constant group
    w[7] += 0.3  # a row far from zero mean
    return w


def test_int8_error_is_at_most_half_a_step():
    w = weights()
    codes, scale = quantize_int8(w)
    assert codes.dtype == torch.int8 and codes.shape == w.shape and scale.shape == (16, 1)
    assert codes.abs().max() <= 127
    err = (dequantize_int8(codes, scale) - w).abs()
    assert torch.all(err <= scale / 2 * (1 + 1e-6))
    assert torch.all(dequantize_int8(codes, scale)[5] == 0)


@pytest.mark.parametrize("cols,group", [(96, 32), (64, 64), (40, 8)])
def test_int4_error_is_at_most_half_a_step(cols, group):
    """Q4_0's rule: the group's largest-magnitude weight is code -8 exactly (the scale carries its sign);
    the rest is within half a step, but for weights beyond +7.5 steps (the top code is 7): one step."""
    w = weights(cols=cols)
    packed, scale = quantize_int4(w, group)
    assert packed.dtype == torch.int32 and packed.shape == (16, cols // 8)
    assert scale.shape == (16, cols // group) and scale.dtype == torch.float16
    rebuilt = dequantize_int4(packed, scale, cols)
    step = scale.float().abs().repeat_interleave(group, dim=1)
    ratio = (w / scale.float().repeat_interleave(group, dim=1))
    half = (rebuilt - w).abs() <= step / 2 + 1e-6 * w.abs()
    assert torch.all(half | ((ratio > 7.5) & ((rebuilt - w).abs() <= step * (1 + 1e-3))))
    assert torch.equal(rebuilt[5], w[5]) and torch.equal(rebuilt[6, :32], torch.full((32,), 0.25))
    peak = w.abs().argmax(dim=1)
    codes = unpack_int4(packed, cols)
    assert torch.all(codes[torch.arange(16), peak][w.abs().amax(1) > 0] == -8)


def test_int4_clipping_search_never_increases_squared_error():
    """The clipping search keeps each group's scale with the least squared error, the Q4_0 scale included."""
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(1)) * 0.05
    w[0, 3] = 0.9  # an outlier, where clipping pays
    plain = dequantize_int4(*quantize_int4(w, 32), 128)
    clipped = dequantize_int4(*quantize_int4(w, 32, clip=True), 128)
    plain_err = (plain - w).square().reshape(32, 4, 32).sum(-1)
    clipped_err = (clipped - w).square().reshape(32, 4, 32).sum(-1)
    assert torch.all(clipped_err <= plain_err + 1e-9) and clipped_err.sum() < plain_err.sum()
    assert 1.0 in CLIP_RATIOS


def test_int4_needs_whole_groups():
    with pytest.raises(ModelError, match="whole groups of 32"):
        quantize_int4(torch.randn(4, 48), 32)


def test_bad_scheme_and_group_size_are_refused():
    model = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(ModelError, match="int3"):
        quantize_model(model, "int3")
    with pytest.raises(ModelError, match="multiple of 8"):
        quantize_model(model, "int4", group_size=31)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quant_linear_matches_dequantised_reference(scheme):
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(64, 24, bias=True), nn.ReLU(), nn.Linear(24, 5))
    quant = quantize_model(plain, scheme, group_size=16)
    assert isinstance(plain[0], nn.Linear)  # the original is left alone
    layer = quant[0]
    assert isinstance(layer, QuantLinear) and layer.bias is not None
    x = torch.randn(3, 7, 64)
    expected = F.linear(x, layer.rows(), layer.bias)
    torch.testing.assert_close(layer(x), expected)
    assert quant(x).shape == plain(x).shape == (3, 7, 5)


@pytest.fixture(scope="module")
def student(student_dir):
    return AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32).eval()


@pytest.mark.parametrize("scheme,kl_bound,top1,saved", [("int8", 1e-4, 0.95, 0.70), ("int4", 2e-2, 0.7, 0.80)])
def test_quantised_student_is_close_and_smaller(student, input_ids, scheme, kl_bound, top1, saved):
    quant = quantize_model(student, scheme)
    linears = [m for m in quant.modules() if isinstance(m, nn.Linear)]
    assert linears == []  # every projection and the head are quantised
    report = quant_report(student, quant, [input_ids])
    assert report["kl_mean"] <= kl_bound and report["top1_agreement"] >= top1
    assert report["saved_fraction"] >= saved
    with torch.no_grad():
        assert quant(input_ids).logits.shape == student(input_ids).logits.shape


def test_tied_vocabulary_stays_tied(student):
    quant = quantize_model(student, "int4")
    embed, head = quant.get_input_embeddings(), quant.lm_head
    assert isinstance(embed, QuantEmbedding) and embed.table is head
    assert head.scheme == "int8" and quant.model.layers[0].mlp.up_proj.scheme == "int4"  # vocab kept at 8 bits
    ids = torch.tensor([[4, 9, 300]])
    torch.testing.assert_close(embed(ids)[0], head.rows()[ids[0]])


def test_keeping_embeddings_in_float(student, untied_dir, input_ids):
    kept = quantize_model(student, "int8", embeddings=False)
    assert isinstance(kept.get_input_embeddings(), nn.Embedding)
    assert kept.lm_head.weight is kept.get_input_embeddings().weight
    untied = AutoModelForCausalLM.from_pretrained(untied_dir, dtype=torch.float32).eval()
    quant = quantize_model(untied, "int4")
    assert isinstance(quant.lm_head, QuantLinear) and quant.get_input_embeddings().table is not quant.lm_head
    assert compare_logits(untied, quant, [input_ids])["kl_mean"] <= 2e-2


def test_kl_per_token():
    a = torch.randn(2, 3, 11)
    assert torch.allclose(kl_per_token(a, a), torch.zeros(2, 3), atol=1e-6)
    b = torch.randn(2, 3, 11)
    p = a.softmax(-1)
    expected = (p * (a.log_softmax(-1) - b.log_softmax(-1))).sum(-1)
    torch.testing.assert_close(kl_per_token(a, b), expected)
    a[..., 0] = float("-inf")  # a padded vocabulary: no NaN
    assert torch.isfinite(kl_per_token(a, b)).all()


def test_compare_logits_masks_and_empty_input(student, input_ids):
    mask = torch.ones_like(input_ids)
    mask[:, -5:] = 0
    report = compare_logits(student, quantize_model(student, "int4"), [{"input_ids": input_ids,
                                                                        "attention_mask": mask}])
    assert report["tokens"] == input_ids.shape[1] - 5
    assert compare_logits(student, student, [])["kl_mean"] == 0.0


def test_dequantize_model_gives_the_same_logits(student, input_ids):
    """Float layers holding the dequantised values: the same logits, the tied matrix still shared."""
    quant = quantize_model(student, "int4", int8_layers=["model.layers.0.mlp.up_proj"])
    assert quant.model.layers[0].mlp.up_proj.scheme == "int8" and quant.kdistill_quantization["int8_layers"] == [
        "model.layers.0.mlp.up_proj"]
    with torch.no_grad():
        expected = quant(input_ids).logits
        plain = dequantize_model(quant)
        torch.testing.assert_close(plain(input_ids).logits, expected, rtol=0, atol=0)
    assert not any(isinstance(m, (QuantLinear, QuantEmbedding)) for m in plain.modules())
    assert plain.lm_head.weight is plain.get_input_embeddings().weight
