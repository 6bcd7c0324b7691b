"""Feature terms in training: the same loss and gradients whatever the chunking and the micro-batch split,
projections (identity / least squares), a plain float64 reference through real models, checkpoints."""
import json

import pytest
import torch
from helpers import feature_batch, tiny_llama, tiny_tokenizer
from safetensors.torch import load_file

from kdistill.config.schema import load_config
from kdistill.losses import build_objective
from kdistill.models.activations import capture
from kdistill.run.distill import distill
from kdistill.sources.model import ModelSource
from kdistill.train import checkpoint
from kdistill.train.features import plan
from kdistill.train.step import StudentLoss, accumulate_gradients

TERMS = [{"kind": "forward_kl"}, {"kind": "hidden_mse", "pairs": [[0, 1], [1, 3]], "weight": 0.7},
         {"kind": "hidden_cosine", "pairs": "uniform", "target": "residual"},
         {"kind": "attention_output", "pairs": [[1, 2]]}, {"kind": "attention_map", "pairs": [[0, 0], [1, 3]], "rows": 3}]


def models(student_width=32, dtype=torch.float64):
    teacher = tiny_llama(300, seed=0, num_hidden_layers=4).to(dtype)
    student = tiny_llama(300, seed=1, hidden_size=student_width, num_attention_heads=4 if student_width == 32 else 2,
                         num_key_value_heads=2 if student_width == 32 else 1).to(dtype)
    return student.train(), teacher


def setup(terms=TERMS, width=32, chunk=4096):
    student, teacher = models(width)
    objective = build_objective(terms)
    features = plan(objective, student, teacher, None, feature_batch(seed=9), chunk_size=chunk).double()
    return student, teacher, objective, features, ModelSource(teacher, tiny_tokenizer(), "")


def grads(*modules):
    return {f"{i}.{n}": p.grad.clone() for i, m in enumerate(modules) for n, p in m.named_parameters()
            if p.grad is not None}


def run(student, source, objective, features, micro):
    student.zero_grad(set_to_none=True)
    features.zero_grad(set_to_none=True)
    row = accumulate_gradients(StudentLoss(student, objective, features), source, micro, torch.device("cpu"), 0.3)
    return row, grads(student, features)


@pytest.mark.parametrize("width", [32, 16])
def test_same_loss_and_gradients_for_any_micro_batch_split_and_chunk(width):
    student, _, objective, features, source = setup(width=width)
    full = feature_batch()
    one, g_one = run(student, source, objective, features, [full])
    halves = [{k: v[:2] for k, v in full.items()}, {k: v[2:] for k, v in full.items()}]
    two, g_two = run(student, source, objective, features, halves)
    features.chunk_size = 3
    chunked, g_chunked = run(student, source, objective, features, [full])
    for other, g_other in ((two, g_two), (chunked, g_chunked)):
        for name in ("loss", "hidden_mse", "hidden_cosine", "attention_output", "attention_map"):
            assert other[name] == pytest.approx(one[name], rel=1e-10, abs=1e-14), name
        assert g_other.keys() == g_one.keys()
        for k in g_one:
            torch.testing.assert_close(g_other[k], g_one[k], rtol=1e-9, atol=1e-13)
    assert any(k.startswith("1.projections") for k in g_one)  # the projections learn too
    assert one["attention_map"] > 0 and one["hidden_mse"] > 0


def reference_hidden(student, teacher, projections, full, pairs, target_of):
    """The plain formula: whole activations, mean over channels and pairs, / the batch's token count."""
    with capture(student, {s: (target_of,) for s, _ in pairs}) as a:
        student(input_ids=full["input_ids"], attention_mask=full["attention_mask"])
    with torch.no_grad(), capture(teacher, {t: (target_of,) for _, t in pairs}) as b:
        teacher(input_ids=full["input_ids"], attention_mask=full["attention_mask"])
    m = full["mask"]
    total = 0.0
    for s, t in pairs:
        x = a[s][target_of] @ projections[f"{s}_{t}"].T
        total = total + ((x - b[t][target_of]) ** 2).mean(-1)[m].sum() / m.sum()
    return total / len(pairs)


@pytest.mark.parametrize("target", ["residual", "normed"])
def test_hidden_mse_equals_a_plain_reference_through_real_models(target):
    terms = [{"kind": "hidden_mse", "pairs": [[0, 1], [1, 3]], "target": target}]
    student, teacher, objective, features, source = setup(terms, width=16)
    full = feature_batch(b=3, t=7, seed=4)
    row, got = run(student, source, objective, features, [full])
    weights = {k.split(":")[1]: v.weight for k, v in features.projections.items()}
    want = reference_hidden(student, teacher, weights, full, [(0, 1), (1, 3)], target)
    assert row["loss"] == pytest.approx(float(want.detach()), rel=1e-11)
    student.zero_grad(set_to_none=True)
    features.zero_grad(set_to_none=True)
    want.backward()
    ref = grads(student, features)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-9, atol=1e-13)


def test_equal_widths_start_at_identity_and_a_copied_student_starts_at_zero():
    student, teacher = models(32)
    student.load_state_dict(teacher.state_dict(), strict=False)
    objective = build_objective([{"kind": "hidden_mse", "pairs": [[i, i] for i in range(2)]},
                                 {"kind": "attention_map", "pairs": [[1, 1]]}])
    features = plan(objective, student, teacher, None, feature_batch()).double()
    for p in features.projections.values():
        assert torch.equal(p.weight, torch.eye(32, dtype=p.weight.dtype))
    student = tiny_llama(300, seed=0, num_hidden_layers=4).double()  # the teacher itself
    row, _ = run(student, ModelSource(teacher, tiny_tokenizer(), ""), objective, features, [feature_batch()])
    assert row["hidden_mse"] == 0.0 and abs(row["attention_map"]) < 1e-12  # same heads: head for head


def test_narrower_projections_start_at_the_least_squares_fit():
    student, teacher, objective, features, _ = setup([{"kind": "hidden_mse", "pairs": [[1, 3]]}], width=16)
    calib = feature_batch(seed=9)
    with torch.no_grad(), capture(student, {1: ("normed",)}) as a, capture(teacher, {3: ("normed",)}) as b:
        student(input_ids=calib["input_ids"], attention_mask=calib["attention_mask"])
        teacher(input_ids=calib["input_ids"], attention_mask=calib["attention_mask"])
    x, y = a[1]["normed"][calib["mask"]], b[3]["normed"][calib["mask"]]
    fitted = features.projection(objective.features[0], 1, 3).weight.double()
    err = ((x @ fitted.T - y) ** 2).mean()
    eye = ((x @ torch.eye(32, 16, dtype=x.dtype).T - y) ** 2).mean()
    assert err < 0.5 * eye  # the fit explains what the leading-channel guess cannot
    noisy = fitted + 0.01 * torch.randn_like(fitted)
    assert err <= ((x @ noisy.T - y) ** 2).mean()


FAST = ["train.seq_len=32", "train.batch_size=4", "train.threads=1", "data.generate.num_samples=16",
        "data.generate.max_new_tokens=24", "student.num_layers=2", "student.hidden_size=16", "student.num_heads=2",
        "student.num_kv_heads=1", "eval.max_new_tokens=4", "eval.measure_speed=false", "train.eval_every=1000",
        "loss.terms=[{kind: forward_kl}, {kind: hidden_mse, pairs: from_init}, {kind: attention_map, pairs: uniform}]"]


def _distill_process(args: list[str]):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{root / 'tests'}", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "kdistill", "distill", *args], env=env, cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_projections_are_checkpointed_resume_exactly_after_kill_9_and_stay_out_of_the_student(tmp_path):
    """A run killed with SIGKILL after a checkpoint and resumed ends like one that never stopped."""
    import os
    import signal
    import time

    from helpers import save_tiny_teacher

    teacher = save_tiny_teacher(tmp_path / "t", num_hidden_layers=4)
    steps = 30
    args = lambda out: [f"teacher.model={teacher}", *FAST, "train.checkpoint_every=2", f"train.max_steps={steps}",
                        f"output_dir={tmp_path / out}"]
    distill(load_config(None, args("a")))
    run = _distill_process(args("b"))
    deadline = time.time() + 200
    while not checkpoint.list_checkpoints(tmp_path / "b") or checkpoint.list_checkpoints(tmp_path / "b")[-1].name < \
            "step-000004":
        assert run.poll() is None, run.stdout.read()
        assert time.time() < deadline
        time.sleep(0.01)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    newest = checkpoint.list_checkpoints(tmp_path / "b")[-1]
    assert newest.name < f"step-{steps:06d}", "killed too late to test resume"
    assert checkpoint.load_feature_tensors(newest)
    resumed = _distill_process([*args("b"), "--resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    a, b = (tmp_path / x / "checkpoints" / f"step-{steps:06d}" for x in "ab")
    pa, pb = checkpoint.load_feature_tensors(a), checkpoint.load_feature_tensors(b)
    assert pa and pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k
    sa, sb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    state = json.loads((a / "trainer_state.json").read_text())
    assert state["feature_pairs"]["hidden_mse"] == [[i, t] for i, t in enumerate(state["student_init"]["layers"])]
    student = load_file(str(tmp_path / "a" / "student" / "model.safetensors"))
    assert not any("projection" in k or ":" in k for k in student)
    assert not list((tmp_path / "a" / "student").glob("features*"))
    eval_json = json.loads((tmp_path / "a" / "eval.json").read_text())
    assert eval_json["student_init"]["feature_pairs"] == state["feature_pairs"]


def test_gradient_checkpointing_gives_the_same_gradients_through_the_hooks():
    """Hooked activations inside a recomputed block (the next block's norm) still carry their gradients."""
    terms = [{"kind": "hidden_mse", "pairs": [[0, 1], [1, 3]], "target": "normed"},
             {"kind": "attention_map", "pairs": [[1, 2]]}]
    student, _, objective, features, source = setup(terms)
    plain, g_plain = run(student, source, objective, features, [feature_batch()])
    getattr(student, "activation_checkpointing_enable", student.gradient_checkpointing_enable)()
    assert student.model.gradient_checkpointing
    again, g_again = run(student, source, objective, features, [feature_batch()])
    assert again["loss"] == pytest.approx(plain["loss"], rel=1e-12) and g_again.keys() == g_plain.keys()
    for k in g_plain:
        torch.testing.assert_close(g_again[k], g_plain[k], rtol=1e-10, atol=1e-14)
