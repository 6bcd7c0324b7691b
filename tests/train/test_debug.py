"""The training debugger: per-layer gradient norms and update ratios in metrics.jsonl every N steps,
vanishing/exploding layers named, and a non-finite gradient names its first parameter."""
import json
import logging

import torch
from helpers import tiny_llama

from kdistill.config.schema import load_config
from kdistill.run.distill import distill
from kdistill.train import debug

FAST = ["train.seq_len=32", "train.batch_size=4", "train.threads=1", "data.generate.num_samples=16",
        "data.generate.max_new_tokens=24", "student.num_layers=2", "eval.max_new_tokens=2",
        "eval.measure_speed=false", "eval.prompts=[Once]", "train.max_steps=4", "train.eval_every=4",
        "student.layer_selection=first_last", "train.warmup_steps=0"]


def test_debug_rows_carry_layer_norms_and_update_ratios(teacher_dir, tmp_path):
    out = tmp_path / "run"
    distill(load_config(None, [f"teacher.model={teacher_dir}", f"output_dir={out}", *FAST, "train.debug_every=2"]))
    rows = {json.loads(r)["step"]: json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()}
    for step in (2, 4):
        assert rows[step]["grad_norm/layer_0"] > 0 and rows[step]["grad_norm/layer_1"] > 0
        assert 0 < rows[step]["update_ratio/layer_1"] < 1 and rows[step]["update_ratio/other"] > 0
    assert "grad_norm/layer_0" not in rows[1] and "grad_norm/layer_0" not in rows[3]


def test_a_non_finite_gradient_names_its_parameter():
    model = tiny_llama(50)
    model(input_ids=torch.randint(0, 50, (1, 6))).logits.sum().backward()
    assert debug.first_non_finite(model) is None
    model.model.layers[1].mlp.up_proj.weight.grad[0, 0] = float("nan")
    assert debug.first_non_finite(model) == "model.layers.1.mlp.up_proj.weight"


def test_vanishing_and_exploding_layers_are_named(caplog):
    model = tiny_llama(50, num_hidden_layers=3)
    before = debug.snapshot(model)
    grads = {"layer_0": 1.0, "layer_1": 1e-6, "layer_2": 1e4, "other": 1.0}
    with caplog.at_level(logging.WARNING, logger="kdistill"):
        row = debug.layer_report(model, grads, before)
    assert "vanishing gradients in layer_1" in caplog.text and "exploding gradients in layer_2" in caplog.text
    assert row["update_ratio/layer_0"] == 0.0 and row["grad_norm/layer_2"] == 1e4
