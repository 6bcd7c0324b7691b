"""Choosing the int4 scheme by measured KL: the lowest candidate within the budget, scored exactly as the
quantised model computes, int8 layers only when they measure better, and never worse than GGUF Q4_0."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from kdistill.base.errors import ModelError
from kdistill.export import choose_int4, compare_logits, quantize_model
from kdistill.export.choose import int4_layers, layer_bits
from kdistill.export.measure import CALIBRATION_TEXT, text_batches
from tests.helpers import tiny_tokenizer


@pytest.fixture(scope="module")
def student(student_dir):
    return AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def calibration():
    return text_batches(tiny_tokenizer(), CALIBRATION_TEXT, 128, 512)


@pytest.fixture(scope="module")
def choice(student, calibration):
    return choose_int4(student, calibration, max_bits=5.0)


def test_the_lowest_fitting_candidate_wins(choice):
    rows = choice["candidates"]
    assert {(r["group_size"], r["clip"]) for r in rows} == {(g, c) for g in (32, 64, 128) for c in (False, True)}
    fitting = [r for r in rows if r["fits"]]
    assert all(r["kl"] is None for r in rows if not r["fits"])  # over budget: not measured
    best = min(fitting, key=lambda r: r["kl"])
    assert (choice["group_size"], choice["clip"]) == (best["group_size"], best["clip"])
    assert choice["kl"] <= best["kl"] and choice["bits"] <= 5.0 + 1e-9


def test_int8_layers_are_kept_only_when_they_measure_better(choice):
    best = min((r for r in choice["candidates"] if r["fits"]), key=lambda r: r["kl"])
    assert choice["promoted"], "with 0.5 bits a weight to spare, some layer should move to int8"
    assert choice["kl"] < best["kl"] and set(choice["promoted"]) <= set(choice["int8_layers"])


def test_the_budget_counts_every_layer(student, choice):
    layers = int4_layers(student)
    bits = sum(layer_bits(layers[n], "int8" if n in choice["int8_layers"] else "int4", choice["group_size"])
               for n in layers) / sum(m.weight.numel() for m in layers.values())
    assert bits == pytest.approx(choice["bits"])


def test_the_score_is_what_the_quantised_model_measures(student, calibration, choice):
    quant = quantize_model(student, "int4", choice["group_size"], clip=choice["clip"],
                           int8_layers=choice["int8_layers"])
    report = compare_logits(student, quant, calibration)
    assert report["kl_mean"] == pytest.approx(choice["kl"], rel=1e-5)
    assert report["top1_agreement"] == pytest.approx(choice["top1"])


def test_no_spare_bits_means_no_int8_layers(student, calibration):
    tight = choose_int4(student, calibration, max_bits=4.5, group_sizes=(32,))
    assert tight["promoted"] == [] and tight["int8_layers"] == [] and tight["bits"] == 4.5


def test_a_budget_below_every_candidate_is_refused(student, calibration):
    with pytest.raises(ModelError, match="--max-bits 4.3: no int4 scheme fits.*4.50"):
        choose_int4(student, calibration, max_bits=4.3, group_sizes=(32,))
