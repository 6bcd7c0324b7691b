"""build_student dispatch: the fractal student on the teacher's vocabulary, narrow LLaMA students pruned."""
import pytest
import torch
from helpers import tiny_llama

from kdistill.base.errors import ConfigError
from kdistill.config.schema import load_config
from kdistill.students import build_student
from kdistill.students.fractal import FractalForCausalLM, principal_embeddings


def build(*overrides, teacher=None, calib=None):
    teacher = teacher if teacher is not None else tiny_llama(90)
    return build_student(load_config(None, list(overrides)), teacher, 96, calib)


def test_fractal_student_takes_its_sizes_from_config_and_embeddings_from_the_teacher():
    teacher = tiny_llama(96)
    model, report = build("student.kind=fractal", "student.hidden_size=16", "student.fractal_steps=3",
                          "student.fractal_alpha=0.25", teacher=teacher)
    assert isinstance(model, FractalForCausalLM)
    c = model.config
    assert (c.vocab_size, c.hidden_size, c.num_steps, c.alpha, c.intermediate_size) == (96, 16, 3, 0.25, 32)
    expected = principal_embeddings(teacher.get_input_embeddings().weight, 16, c.initializer_range)
    torch.testing.assert_close(model.get_input_embeddings().weight, expected)
    assert report["kind"] == "fractal" and report["core_parameters"] < report["parameters"]
    random, report = build("student.kind=fractal", "student.hidden_size=16", "student.init=random", teacher=teacher)
    assert report["embeddings"] == "random"
    assert not torch.allclose(random.get_input_embeddings().weight, expected)


def test_fractal_default_width_is_the_seeds_and_bad_widths_name_the_keys():
    model, _ = build("student.kind=fractal", "student.fractal_steps=1")
    assert model.config.hidden_size == 256 and model.config.intermediate_size == 512
    with pytest.raises(ConfigError, match="student.hidden_size=20 must be a multiple of 2 x student.num_heads=4"):
        build("student.kind=fractal", "student.hidden_size=20")


def test_narrow_llama_student_is_pruned_and_wider_one_projected():
    g = torch.Generator().manual_seed(0)
    calib = {"input_ids": torch.randint(3, 90, (2, 8), generator=g),
             "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    calib["mask"] = calib["attention_mask"].bool()
    _, report = build("student.num_layers=1", "student.intermediate_size=32", "student.layer_selection=first_last",
                      calib=calib)  # teacher rows 90, student 96: the extra rows stay as initialised
    assert report["layers"] == [0] and report["ffn"] == "pruned to 32 of 64 channels"
    _, report = build("student.num_layers=1", "student.hidden_size=64", "student.num_heads=8", calib=calib)
    assert report["embeddings"] == "projected (SVD)" and report["layers"] == []


def test_the_start_up_fits_get_their_configured_shares_of_the_time_left(monkeypatch):
    import kdistill.students as S
    import kdistill.students.repair as R
    from kdistill.train import budget as B

    seen = {}
    monkeypatch.setattr(S, "fit_copied_spans", lambda *a: seen.setdefault("span_fit", a[-1]) and {})
    monkeypatch.setattr(R, "repair_from_teacher", lambda *a: seen.setdefault("repair", a[-1]) and {})
    monkeypatch.setattr(B.time, "time", lambda: 1020.0)  # 40 s left of a minute from 1000
    g = torch.Generator().manual_seed(0)
    calib = {"input_ids": torch.randint(3, 90, (2, 8), generator=g),
             "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    calib["mask"] = calib["attention_mask"].bool()
    teacher = tiny_llama(90, num_hidden_layers=4)
    build_student(load_config(None, ["student.num_layers=2", "student.span_fit_share=0.5",
                                     "student.repair_share=0.25"]), teacher, 96, calib,
                  budget=B.Budget(1.0, start=1000.0))
    assert seen == {"span_fit": 20.0, "repair": 10.0}
    with pytest.raises(ConfigError, match="student.span_fit_share"):
        load_config(None, ["student.span_fit_share=0"])
