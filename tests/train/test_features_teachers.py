"""Feature terms with several teachers (`teacher.sources`): the combined loss and gradients are the weighted
sum of each teacher's computed alone (teachers of other depths and widths, each with its own pairs and
projections), and a run with an EMA teacher (alone, and beside a model) trains, checkpoints and resumes."""
import json
import shutil

import pytest
import torch
from helpers import feature_batch, tiny_llama, tiny_tokenizer
from safetensors.torch import load_file

from kdistill.config.schema import load_config
from kdistill.losses import build_objective
from kdistill.run.distill import distill
from kdistill.sources.model import ModelSource
from kdistill.sources.multi import MultiSource
from kdistill.train import checkpoint
from kdistill.train.features import plan
from kdistill.train.step import StudentLoss, accumulate_gradients

TERMS = [{"kind": "hidden_mse", "pairs": "uniform", "weight": 0.7},
         {"kind": "hidden_cosine", "pairs": "uniform", "target": "residual"},
         {"kind": "attention_output", "pairs": "uniform"}, {"kind": "attention_map", "pairs": "uniform", "rows": 3}]
NAMES = ("hidden_mse", "hidden_cosine", "attention_output", "attention_map")
WEIGHTS = {"a": 0.7, "b": 0.3}


def _teachers():
    """Two teachers of other depths and widths than each other and the student (width 16, 2 layers)."""
    a = tiny_llama(300, seed=0, num_hidden_layers=4).double()
    b = tiny_llama(300, seed=2, num_hidden_layers=3, hidden_size=48, intermediate_size=96).double()
    return {"a": a, "b": b}


def _run(student, source, features, full):
    student.zero_grad(set_to_none=True)
    features.zero_grad(set_to_none=True)
    row = accumulate_gradients(StudentLoss(student, build_objective(TERMS), features), source, [full],
                               torch.device("cpu"), 0.3)
    grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    return row, grads, {n: p.grad.clone() for n, p in features.named_parameters() if p.grad is not None}


def test_the_combined_feature_loss_is_the_weighted_sum_of_each_teachers_alone():
    teachers = _teachers()
    student = tiny_llama(300, seed=1, hidden_size=16, num_attention_heads=2, num_key_value_heads=1).double().train()
    calib = feature_batch(seed=9)
    children = []
    for name, model in teachers.items():
        child = ModelSource(model, tiny_tokenizer(), "")
        child.against = name
        children.append(child)
    source = MultiSource(children, list(WEIGHTS.values()), "sum", None, teachers["a"])
    combined = plan(build_objective(TERMS), student, source.feature_teachers(), None, calib).double()
    assert {t.name: t.width for t in combined.teachers} == {"a": 32, "b": 48}
    assert [list(t.terms[0].resolved) for t in combined.teachers] == [[(0, 1), (1, 3)], [(0, 1), (1, 2)]]
    full = feature_batch()
    row, grads, proj = _run(student, source, combined, full)
    want, want_grads = {k: 0.0 for k in ("loss", *NAMES)}, {k: 0.0 for k in grads}
    for name, model in teachers.items():
        alone = plan(build_objective(TERMS), student, model, None, calib).double()
        for key, linear in alone.projections.items():  # the same start as the combined run's projections
            assert torch.equal(linear.weight, combined.projections[f"{name}/{key}"].weight)
        one, g, p = _run(student, ModelSource(model, tiny_tokenizer(), ""), alone, full)
        for k in want:
            want[k] += WEIGHTS[name] * one[k]
        for k in grads:
            want_grads[k] = want_grads[k] + WEIGHTS[name] * g[k]
        for key in p:  # each teacher's projections learn from its own share only
            mine = proj[key.replace("projections.", f"projections.{name}/")]
            torch.testing.assert_close(mine, WEIGHTS[name] * p[key], rtol=1e-10, atol=1e-14)
        for term in NAMES:
            assert row[f"{term}/{name}"] == pytest.approx(one[term], rel=1e-10, abs=1e-14), (term, name)
    for k, v in want.items():
        assert row[k] == pytest.approx(v, rel=1e-10, abs=1e-14), k
    for k in grads:  # one backward of the sum, or two summed: LLaMA's RMSNorm backward runs in fp32 even here
        torch.testing.assert_close(grads[k], want_grads[k], rtol=1e-6, atol=1e-6)
    assert row["hidden_mse"] > 0 and row["attention_map"] > 0


FAST = ["train.seq_len=32", "train.batch_size=4", "train.threads=1", "data.generate.num_samples=16",
        "data.generate.max_new_tokens=24", "student.num_layers=2", "eval.max_new_tokens=2",
        "eval.measure_speed=false", "eval.prompts=[Once]", "train.lr=0.01", "train.warmup_steps=0",
        "train.checkpoint_every=1", "train.keep_checkpoints=4", "train.eval_every=1000",
        "loss.terms=[{kind: forward_kl}, {kind: hidden_mse, pairs: from_init}]"]


def test_an_ema_teacher_with_a_hidden_term_trains(teacher_dir, tmp_path):
    """Deep supervision by an EMA of the student: its layers start equal to the student's, then lag."""
    out = tmp_path / "ema"
    ema = "teacher.sources=[{name: ema, kind: ema, update_rate: 0.5}]"
    distill(load_config(None, [f"teacher.model={teacher_dir}", ema, *FAST, "train.max_steps=3", f"output_dir={out}"]))
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()][1:]
    assert all(torch.isfinite(torch.tensor([r["loss"], r["hidden_mse"]])).all() for r in rows)
    assert rows[0]["hidden_mse"] == pytest.approx(0.0, abs=1e-10)  # the shadow is the student at step 1
    assert rows[2]["hidden_mse"] > 0 and rows[2]["hidden_mse/ema"] == rows[2]["hidden_mse"]
    first, last = (load_file(str(out / "checkpoints" / f"step-{s:06d}" / "model.safetensors")) for s in (1, 3))
    assert any(not torch.equal(first[k], last[k]) for k in first)  # the weights change
    state = json.loads((out / "checkpoints" / "step-000003" / "trainer_state.json").read_text())
    assert state["feature_pairs"] == {"hidden_mse": {"ema": [[0, 0], [1, 1]]}}  # layer s with shadow layer s


def test_a_model_and_an_ema_teacher_train_features_and_resume_exactly(teacher_dir, tmp_path):
    sources = f"teacher.sources=[{{name: t, model: {teacher_dir}, weight: 0.5}}, " \
              "{name: ema, kind: ema, update_rate: 0.3, weight: 0.5}]"
    args = [f"teacher.model={teacher_dir}", sources, *FAST, "student.hidden_size=16", "student.num_heads=2",
            "student.num_kv_heads=1", "train.max_steps=4"]
    distill(load_config(None, [*args, f"output_dir={tmp_path / 'whole'}"]))
    whole = tmp_path / "whole" / "checkpoints" / "step-000004"
    state = json.loads((whole / "trainer_state.json").read_text())
    copied = [[i, t] for i, t in enumerate(state["student_init"]["layers"])]
    assert state["feature_pairs"] == {"hidden_mse": {"t": copied, "ema": [[0, 0], [1, 1]]}}
    projections = checkpoint.load_feature_tensors(whole)
    assert {k: tuple(v.shape) for k, v in projections.items()} == {
        f"projections.t/hidden_mse:{s}_{t}.weight": (32, 16) for s, t in copied} | {
        f"projections.ema/hidden_mse:{s}_{s}.weight": (16, 16) for s in range(2)}
    rows = [json.loads(r) for r in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()][1:]
    for r in rows:
        assert r["hidden_mse"] == pytest.approx(0.5 * r["hidden_mse/t"] + 0.5 * r["hidden_mse/ema"], rel=1e-6)
    split = shutil.copytree(tmp_path / "whole", tmp_path / "split")
    shutil.rmtree(split / "checkpoints" / "step-000004")  # as if killed right after step 3's checkpoint
    shutil.rmtree(split / "student")
    (split / "eval.json").unlink()
    distill(load_config(None, [*args, f"output_dir={split}"]), resume=True)
    resumed = split / "checkpoints" / "step-000004"
    for name in ("model.safetensors", checkpoint.FEATURE_TENSORS, "source.safetensors"):
        a, b = load_file(str(whole / name)), load_file(str(resumed / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
