"""Recipe options end to end on a tiny teacher: frozen embeddings stay the teacher's while the layers
train, the span fit and the residual-stream repair run and are reported, and all are refused where they
cannot apply."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kdistill.base.errors import ConfigError
from kdistill.config.schema import load_config
from kdistill.run.distill import distill

FAST = ["train.seq_len=32", "train.batch_size=4", "train.threads=1", "data.generate.num_samples=16",
        "data.generate.max_new_tokens=24", "student.num_layers=1", "eval.max_new_tokens=4",
        "eval.measure_speed=false", "train.max_steps=3", "train.eval_every=3", "eval.prompts=[Once]"]


def _cfg(teacher_dir, out, *extra):
    return load_config(None, [f"teacher.model={teacher_dir}", f"output_dir={out}", *FAST, *extra])


def test_frozen_embeddings_stay_the_teachers_and_layers_train(teacher_dir, tmp_path):
    distill(_cfg(teacher_dir, tmp_path / "run", "train.freeze_embeddings=true"))
    student = load_file(tmp_path / "run" / "student" / "model.safetensors")
    teacher = load_file(Path(teacher_dir) / "model.safetensors")
    key = "model.embed_tokens.weight"
    assert torch.equal(student[key], teacher[key])
    copied = json.loads((tmp_path / "run" / "eval.json").read_text())["student_init"]["layers"][0]
    name = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(student[name], teacher[name.replace("layers.0", f"layers.{copied}")])


def test_repair_is_reported_and_lowers_the_calibration_kl(teacher_dir, tmp_path):
    distill(_cfg(teacher_dir, tmp_path / "run", "student.repair_steps=5"))
    repair = json.loads((tmp_path / "run" / "eval.json").read_text())["student_init"]["repair"]
    assert repair["steps"] == 5 and repair["calibration_kl_after"] <= repair["calibration_kl_before"]
    assert len(repair["attention_scales"]) == len(repair["mlp_scales"]) == 1


def test_span_fit_runs_before_the_repair_and_is_reported(teacher_dir, tmp_path):
    distill(_cfg(teacher_dir, tmp_path / "run", "student.span_fit_steps=4", "student.span_fit_rows=6",
                 "student.repair_steps=2"))
    init = json.loads((tmp_path / "run" / "eval.json").read_text())["student_init"]
    fit, layer = init["span_fit"], init["layers"][0]
    assert fit["steps"] == 4 and fit["rows"] == 6 and fit["loss_last"] < fit["loss_first"]
    assert fit["pairs"] == [[0, init_teacher_layers(teacher_dir) - 1]] and layer <= fit["pairs"][0][1]
    assert init["repair"]["steps"] == 2


def test_span_fit_skips_a_pruned_student_and_says_why(teacher_dir, tmp_path):
    distill(_cfg(teacher_dir, tmp_path / "run", "student.span_fit_steps=2", "student.hidden_size=32",
                 "student.num_heads=2", "student.num_kv_heads=1", "student.intermediate_size=64"))
    init = json.loads((tmp_path / "run" / "eval.json").read_text())["student_init"]
    assert init["span_fit"].startswith("skipped: the student is narrower")


def test_span_fit_skips_layers_out_of_order_and_says_why(tmp_path):
    from helpers import save_tiny_teacher

    deeper = save_tiny_teacher(tmp_path / "teacher", num_hidden_layers=3)
    distill(_cfg(deeper, tmp_path / "run", "student.span_fit_steps=2", "student.num_layers=2",
                 "student.layer_selection=explicit", "student.layers=[2, 0]"))
    init = json.loads((tmp_path / "run" / "eval.json").read_text())["student_init"]
    assert init["span_fit"].startswith("skipped: the copied layers are not in increasing order")


def init_teacher_layers(teacher_dir) -> int:
    return json.loads((Path(teacher_dir) / "config.json").read_text())["num_hidden_layers"]


@pytest.mark.parametrize("extra, named", [
    (["train.freeze_embeddings=true", "student.init=random"], "train.freeze_embeddings"),
    (["student.repair_steps=-1"], "student.repair_steps"),
    (["student.span_fit_steps=-2"], "student.span_fit_steps"),
    (["student.span_fit_lr=0"], "student.span_fit_lr"),
])
def test_refused_before_loading(teacher_dir, tmp_path, extra, named):
    with pytest.raises(ConfigError, match=named):
        _cfg(teacher_dir, tmp_path / "run", *extra)
