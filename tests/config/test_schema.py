"""Config: defaults, YAML files, overrides, coercion, unknown keys with suggestions, resolved dump."""
import pytest
import yaml

from kdistill.base.errors import ConfigError
from kdistill.config.schema import Config, dump, load_config


def test_defaults_and_overrides_coerce_types():
    cfg = load_config(None, ["train.lr=1e-3", "train.max_steps=20", "student.layers=[1, 2]",
                             "train.gradient_checkpointing=true", "data.path="])
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.train.max_steps == 20 and cfg.student.layers == [1, 2]
    assert cfg.train.gradient_checkpointing is True and cfg.data.path is None


def test_yaml_states_only_differences_and_string_floats_coerced(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 1e-3\n  batch_size: '4'\noutput_dir: out\n")
    cfg = load_config(f)
    assert cfg.train.lr == 0.001 and cfg.train.batch_size == 4 and cfg.output_dir == "out"
    assert cfg.train.seq_len == Config().train.seq_len


def test_unknown_key_names_file_line_and_nearest(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("teacher:\n  model: default\ntrain:\n  max_step: 3\n")
    with pytest.raises(ConfigError, match=r"train\.max_step.*line 4.*train\.max_steps"):
        load_config(f)
    with pytest.raises(ConfigError, match="did you mean 'train.seq_len'"):
        load_config(None, ["train.seqlen=3"])


def test_bad_values_and_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="train.lr.*not a valid float"):
        load_config(None, ["train.lr=fast"])
    with pytest.raises(ConfigError, match="train.max_steps.*not a valid int"):
        load_config(None, ["train.max_steps=2.5"])
    with pytest.raises(ConfigError, match=r"train.batch_size=0 \(command line\) must be at least 1"):
        load_config(None, ["train.batch_size=0"])
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  lr: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml, line"):
        load_config(f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(None, ["train.lr"])


def test_dump_round_trips():
    cfg = load_config(None, ["train.max_steps=7"])
    data = yaml.safe_load(dump(cfg))
    assert data["train"]["max_steps"] == 7
    assert load_config(None, []).train.max_steps != 7


def test_every_shipped_config_loads():
    from pathlib import Path

    files = sorted(Path(__file__).parents[2].joinpath("configs").glob("*.yaml"))
    assert files
    for f in files:
        load_config(f)


def test_learning_rate_default_depends_on_the_student():
    from kdistill.config.presets import FITTED_LR, OTHER_LR, PRESETS, SHALLOW_LR, TEACHER_WIDTH

    assert load_config(None, []).train.lr == FITTED_LR  # teacher layers at the teacher's width, span-fitted
    for extra in (["student.span_fit_steps=0"], ["student.hidden_size=128"], ["student.preset=micro"],
                  ["student.tokenizer=some/tokenizer"]):  # no span fit runs: the shallow student's rate
        assert load_config(None, extra).train.lr == SHALLOW_LR, extra
    assert load_config(None, ["student.preset=teacher-width-4l"]).train.lr == FITTED_LR
    assert TEACHER_WIDTH == ("auto", "teacher-width-4l", "teacher-width-8l", "teacher-width-12l")
    assert set(TEACHER_WIDTH) == {name for name, sizes in PRESETS.items()
                                  if not {"hidden_size", "num_heads", "intermediate_size"} & set(sizes)}
    for extra in (["student.kind=fractal"], ["student.kind=pretrained", "student.model=x"], ["student.init=random"]):
        assert load_config(None, extra).train.lr == OTHER_LR, extra
    assert load_config(None, ["train.lr=1e-4"]).train.lr == 1e-4
    assert load_config(None, ["train.lr=1e-4", "student.kind=fractal"]).train.lr == 1e-4


def test_frozen_embeddings_default_depends_on_the_student():
    # the teacher's own embeddings, unchanged: frozen (with or without the span fit)
    for extra in ([], ["student.span_fit_steps=0"], ["student.preset=teacher-width-4l"]):
        assert load_config(None, extra).train.freeze_embeddings is True, extra
    for extra in (["student.hidden_size=128"], ["student.preset=micro"], ["student.tokenizer=some/tokenizer"],
                  ["student.kind=fractal"], ["student.kind=pretrained", "student.model=x"], ["student.init=random"]):
        assert load_config(None, extra).train.freeze_embeddings is False, extra
    assert load_config(None, ["train.freeze_embeddings=false"]).train.freeze_embeddings is False
    assert load_config(None, ["train.freeze_embeddings="]).train.freeze_embeddings is True  # empty: by student
    with pytest.raises(ConfigError, match="set train.freeze_embeddings=false"):  # said, not resolved
        load_config(None, ["train.freeze_embeddings=true", "student.init=random"])


def test_loss_terms_whose_weights_are_all_0_are_refused_naming_each_with_its_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("loss:\n  terms:\n    - kind: forward_kl\n      weight: 0\n    - {kind: ce, weight: 0.0}\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert str(err.value).startswith(f"loss.terms[0].weight=0 ({f}, line 4), loss.terms[1].weight=0 ({f}, line 5): "
                                     "every loss term's weight is 0"), err.value
    with pytest.raises(ConfigError, match=r"loss.terms\[0\].weight=0 \(command line\): every loss term's weight"):
        load_config(f, ["loss.terms=[{kind: reverse_kl, weight: {schedule: linear, start: 0, end: 0}}]"])
    load_config(f, ["loss.terms=[{kind: ce, weight: 0}, {kind: forward_kl, weight: 0.5}]"])  # one counts: fine
    load_config(f, ["loss.terms=[{kind: forward_kl, weight: {schedule: linear, start: 0, end: 1}}]"])  # a warm-up: fine
