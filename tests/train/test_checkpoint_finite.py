"""A checkpoint is good before it is called good: weights, optimizer state and the source's and feature
tensors are checked finite before anything is written; a refused one leaves the older checkpoints, and the
error names the tensor and the last good checkpoint."""
import pytest
import torch
from helpers import tiny_llama, tiny_tokenizer
from safetensors.torch import load_file

from kdistill.train import checkpoint

VOCAB = 320


def _trained(seed=0):
    """A tiny student with a real AdamW + LambdaLR after one step (so the optimizer has state)."""
    model = tiny_llama(VOCAB, seed=seed).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    model(input_ids=torch.arange(8).view(1, 8), labels=torch.arange(8).view(1, 8)).loss.backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler


def _save(out, step, parts, **kw):
    model, optimizer, scheduler = parts
    return checkpoint.save_checkpoint(out, step, model, tiny_tokenizer(), optimizer, scheduler,
                                      {"tokens": step, "data": {}}, 3, **kw)


def _listing(out):
    return sorted(str(p.relative_to(out)) for p in out.rglob("*"))


def _poison_weight(parts):
    with torch.no_grad():
        parts[0].model.layers[0].mlp.down_proj.weight[1, 2] = float("inf")


def _poison_optimizer(parts):
    optimizer = parts[1]
    state = optimizer.state[next(iter(optimizer.state))]
    state["exp_avg_sq"].view(-1)[0] = float("nan")


@pytest.mark.parametrize("poison, named", [
    (_poison_weight, r"weight model.layers.0.mlp.down_proj.weight \(0 NaN and 1 infinite of "),
    (_poison_optimizer, r"optimizer state 0.exp_avg_sq \(1 NaN"),
])
def test_a_non_finite_checkpoint_is_not_written_and_the_last_good_one_is_named(tmp_path, poison, named):
    out = tmp_path / "run"
    good = _save(out, 1, _trained())
    before = _listing(out)
    parts = _trained(seed=1)
    poison(parts)
    with pytest.raises(checkpoint.NonFiniteCheckpoint, match=named) as e:
        _save(out, 2, parts)
    assert "checkpoint step-000002 was not written" in str(e.value)
    assert f"the last good checkpoint is kept: {good}" in str(e.value) and "Lower train.lr" in str(e.value)
    assert _listing(out) == before  # nothing written, no temporary left
    assert checkpoint.resume_point(out) == (good, [])


def test_source_and_feature_tensors_are_checked_too(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(checkpoint.NonFiniteCheckpoint, match=r"teacher source tensor shadow.w \(1 NaN.*no checkpoint"):
        _save(out, 1, _trained(), source_tensors={"shadow.w": torch.tensor([0.0, float("nan")])})
    with pytest.raises(checkpoint.NonFiniteCheckpoint, match=r"feature projection p \(0 NaN and 1 infinite"):
        _save(out, 1, _trained(), feature_tensors={"p": torch.tensor([float("-inf")])})
    assert not checkpoint.list_checkpoints(out)


def test_a_finite_checkpoint_is_written_whole(tmp_path):
    path = _save(tmp_path / "run", 3, _trained())
    assert all(torch.isfinite(v).all() for v in load_file(str(path / "model.safetensors")).values())
    assert all(torch.isfinite(v).all() for v in load_file(str(path / "optimizer.safetensors")).values())
