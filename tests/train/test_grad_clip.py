"""train.grad_clip: 0 or empty means no clipping (what HF/TRL users write), so the weights move exactly as
without a clip; a positive clip scales a larger gradient down; the logged grad_norm is the norm before."""
import pytest
import torch
from helpers import tiny_llama, tiny_tokenizer
from safetensors.torch import load_file

from kdistill.config.schema import TrainConfig, load_config
from kdistill.losses import build_objective
from kdistill.run.distill import distill
from kdistill.sources.model import ModelSource
from kdistill.train.schedule import make_optimizer
from kdistill.train.step import StudentLoss, train_step


def _batch(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 300, (4, 12), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "targets": torch.roll(ids, -1, 1),
            "mask": torch.ones_like(ids, dtype=torch.bool)}


def run_steps(grad_clip, steps: int = 3):
    """(start weights, weights after `steps` train steps, logged grad norms) of a tiny student."""
    student = tiny_llama(300, seed=1).train()
    source = ModelSource(tiny_llama(300, seed=0), tiny_tokenizer(), "")
    start = {n: p.detach().clone() for n, p in student.named_parameters()}
    model = StudentLoss(student, build_objective([{"kind": "forward_kl"}]))
    optimizer = make_optimizer(list(student.parameters()), TrainConfig(lr=1e-3))
    norms = [train_step(model, source, optimizer, [_batch(i)], torch.device("cpu"), i / steps, grad_clip)["grad_norm"]
             for i in range(steps)]
    return start, {n: p.detach().clone() for n, p in student.named_parameters()}, norms


def _moved(a: dict, b: dict) -> float:
    return max((a[n] - b[n]).abs().max().item() for n in a)


def test_grad_clip_0_moves_the_weights_exactly_like_no_clip():
    start, unclipped, norms = run_steps(None)
    _, zero, zero_norms = run_steps(0.0)
    assert _moved(start, unclipped) > 1e-3  # Adam's first steps move each weight by about lr
    assert _moved(unclipped, zero) == 0.0 and zero_norms == norms
    _, clipped, clipped_norms = run_steps(min(norms) / 10)  # below every norm: each step is scaled down
    assert clipped_norms[0] == norms[0] and _moved(unclipped, clipped) > 0.0


def test_grad_clip_is_a_config_key_that_takes_0_and_empty_and_refuses_negative(teacher_dir, tmp_path):
    fast = [f"teacher.model={teacher_dir}", "train.seq_len=32", "train.batch_size=4", "train.threads=1",
            "data.generate.num_samples=16", "data.generate.max_new_tokens=24", "student.num_layers=1",
            "eval.max_new_tokens=4", "eval.measure_speed=false", "train.max_steps=2", "eval.prompts=Once",
            "student.repair_steps=0", "student.span_fit_steps=0"]
    weights = {}
    for clip in ("0", "", "1e-12"):  # 1e-12: what 0 did before, every gradient clipped to (almost) nothing
        distill(load_config(None, [*fast, f"output_dir={tmp_path / f'run{clip}'}", f"train.grad_clip={clip}"]))
        weights[clip] = load_file(tmp_path / f"run{clip}" / "student" / "model.safetensors")
    assert all(torch.equal(weights["0"][n], weights[""][n]) for n in weights[""])
    assert not all(torch.equal(weights["0"][n], weights["1e-12"][n]) for n in weights[""])
    with pytest.raises(Exception, match=r"train.grad_clip=-1.0 \(command line\) must be at least 0"):
        load_config(None, [*fast, "train.grad_clip=-1"])
