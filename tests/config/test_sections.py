"""Each config section checks its own keys; typed choices refuse unknown names; checks across sections."""
import dataclasses
import typing

import pytest

from kdistill.base.errors import ConfigError
from kdistill.config import choices as C
from kdistill.config.checks import FEATURE_WHAT, check_agreement, check_supported
from kdistill.config.generation import CotConfig
from kdistill.config.schema import (
    Config,
    DataConfig,
    LossConfig,
    StudentConfig,
    TeacherConfig,
    TrainConfig,
    load_config,
    validate,
)
from kdistill.config.sources import source_entries


@pytest.mark.parametrize("section, key, value, message", [
    (TeacherConfig, "max_memory", "2GB", "teacher.max_memory needs teacher.offload_dir"),
    (TeacherConfig, "sources", [{"name": "a", "modle": "x"}], "teacher.sources[0].modle: unknown key"),
    (StudentConfig, "layer_selection", "explicit", "student.layers must list teacher layer indices"),
    (LossConfig, "terms", [{"kind": "forwrd_kl"}], "loss.terms[0].kind: unknown divergence 'forwrd_kl'"),
    (TrainConfig, "device", "gpu", "train.device='gpu' is not a device"),
    (CotConfig, "answer_weight", 0.0, "data.generate.cot.rationale_weight and answer_weight are both 0"),
])
def test_each_section_refuses_a_bad_combination_naming_the_key(section, key, value, message):
    section().validate()  # the defaults are valid
    bad = dataclasses.replace(section(), **{key: value})
    if section is CotConfig:
        bad.rationale_weight = 0.0
    with pytest.raises(ConfigError) as err:
        bad.validate()
    assert message in str(err.value)


@pytest.mark.parametrize("override, message", [
    ("student.num_heads=0", "student.num_heads=0 (command line) must be at least 1, or empty"),
    ("student.span_fit_lr=0", "student.span_fit_lr=0.0 (command line) must be above 0 (a learning rate"),
    ("student.fractal_steps=0", "student.fractal_steps=0 (command line) must be at least 1"),
    ("data.heldout_fraction=1", "data.heldout_fraction=1.0 (command line) must be in (0, 1)"),
    ("loss.chunk_size=0", "loss.chunk_size=0 (command line) must be at least 1, or empty"),
    ("train.seq_len=4", "train.seq_len=4 (command line) must be at least 8"),
    ("eval.max_batches=0", "eval.max_batches=0 (command line) must be at least 1, or empty (empty = all)"),
    ("cache.value_bits=20", "cache.value_bits=20 (command line) must be between 2 and 16"),
    ("rollout.top_p=0", "rollout.top_p=0.0 (command line) must be in (0, 1]"),
    ("data.generate.temperature=-1", "data.generate.temperature=-1.0 (command line) must be at least 0 (0 = greedy)"),
    ("data.generate.filter.near_duplicate=1.5", "near_duplicate=1.5 (command line) must be in (0, 1], or empty"),
    ("data.generate.self_instruct.oversample=0.5", "oversample=0.5 (command line) must be at least 1"),
    ("data.generate.cot.memory_mb=8", "data.generate.cot.memory_mb=8 (command line) must be at least 32"),
])
def test_a_value_out_of_its_range_is_refused_naming_key_value_and_range(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_data_comes_from_one_place():
    data = DataConfig(path="notes.txt")
    data.generate.cot.problems = "problems.jsonl"
    with pytest.raises(ConfigError, match="data.path and data.generate.cot.problems are both set"):
        data.validate()


@pytest.mark.parametrize("override, names", [
    ("teacher.combine=sumn", "sum, route"),
    ("student.kind=llamma", "llama, fractal, pretrained"),
    ("cache.mode=top_k", "topk, sampled"),
    ("rollout.source=students", "data, student, teacher"),
    ("data.generate.cot.mode=rationales", "rationale, program, code"),
    ("train.tracker=[jsonl, tensorbord]", "jsonl, tensorboard, aim, wandb"),
])
def test_a_choice_refuses_an_unknown_name_listing_the_valid_ones(override, names):
    key, value = override.split("=")
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    text = str(err.value)
    assert text.startswith(key) and "(command line): unknown" in text, text
    assert f"(choices: {names})" in text and "; did you mean '" in text, text


def test_a_config_built_in_code_gets_the_same_choice_check():
    cfg = Config()
    cfg.teacher.load_in = "16bit"
    with pytest.raises(ConfigError, match=r"teacher.load_in: unknown load in '16bit' \(choices: full, 8bit, 4bit\)"):
        validate(cfg)
    cfg = Config()
    cfg.student.preset = "tiniest"
    with pytest.raises(ConfigError, match="student.preset: unknown preset 'tiniest'"):
        validate(cfg)


def test_choices_are_the_names_the_code_takes():
    """The Literal types in config/ mirror constants of heavier modules (torch) that config may not import."""
    from kdistill.base.hardware import DTYPES
    from kdistill.losses.feature_terms import KINDS as FEATURE_KINDS
    from kdistill.sources.server_client import APIS
    from kdistill.train.distributed import MODES
    from kdistill.train.tracking import KINDS as TRACKERS

    assert set(typing.get_args(C.Dtype)) == {"auto", *DTYPES}
    assert typing.get_args(C.Distributed) == MODES
    assert typing.get_args(C.Tracker) == TRACKERS
    assert typing.get_args(C.ServerApi) == APIS
    assert set(FEATURE_WHAT) == set(FEATURE_KINDS)


def test_every_literal_default_is_one_of_its_choices():
    C.check_choices(Config())
    hints = typing.get_type_hints(StudentConfig)
    assert C.choices(hints["preset"])[0] == "auto" and C.choices(hints["num_layers"]) is None
    assert C.choices(typing.get_type_hints(TrainConfig)["tracker"]) == typing.get_args(C.Tracker)


def test_checks_across_sections():
    cfg = Config()
    cfg.train.freeze_embeddings, cfg.student.init = True, "random"
    with pytest.raises(ConfigError, match="set train.freeze_embeddings=false"):
        check_agreement(cfg)
    cfg = Config()
    cfg.rollout.source, cfg.rollout.max_new_tokens = "student", cfg.train.seq_len
    with pytest.raises(ConfigError, match="rollout.max_new_tokens must be below train.seq_len=128"):
        check_agreement(cfg)
    with pytest.raises(ConfigError, match="teacher.combine=route needs data.path"):
        load_config(None, ["teacher.sources=[{name: a, model: default}]", "teacher.combine=route",
                           "teacher.route_key=domain"])


def test_unsupported_combinations_are_refused_by_the_config_alone():
    cfg = load_config(None, ["teacher.cache=runs/c", "loss.terms=[{kind: hidden_mse}]"])
    with pytest.raises(ConfigError, match=r"loss.terms\[0\] \(hidden_mse\) compares the teacher's hidden states"):
        check_supported(cfg)
    cfg = load_config(None, ["student.tokenizer=some/tokenizer", "data.path=x.jsonl"])
    with pytest.raises(ConfigError, match=r"student.tokenizer=some/tokenizer: loss.terms\[0\].kind=forward_kl"):
        check_supported(cfg)
    cfg = load_config(None, ["teacher.cache=runs/c", "rollout.source=student", "rollout.max_new_tokens=8"])
    with pytest.raises(ConfigError, match="cannot score new text"):
        check_supported(cfg)
    check_supported(load_config(None, []))


def test_sources_entries_are_normalised_and_checked():
    teacher = TeacherConfig(sources=[{"name": "a", "model": "default", "weight": 3},
                                     {"name": "b", "cache": "runs/c", "weight": 1}])
    entries = source_entries(teacher)
    assert [(e["kind"], e["weight"]) for e in entries] == [("model", 0.75), ("cache", 0.25)]
    teacher.combine, teacher.route_key = "route", "domain"
    with pytest.raises(ConfigError, match="combine=route with a cache in teacher.sources is not supported"):
        source_entries(teacher)
    teacher.cache = "runs/other"
    with pytest.raises(ConfigError, match="teacher.sources and teacher.cache are both set"):
        TeacherConfig(sources=teacher.sources[:1], cache="runs/other").validate()


@pytest.mark.parametrize("override,message", [
    ("teacher.server=localhost:8000", "give the server's URL"),
    ("teacher.server_top_k=0", "teacher.server_top_k=0 \\(command line\\) must be at least 1"),
    ("teacher.server_timeout=0", "teacher.server_timeout=0.0 \\(command line\\) must be above 0 \\(seconds\\)"),
    ("teacher.server_api=tgi", "unknown server api .tgi. \\(choices: vllm, sglang\\)"),
])
def test_the_server_keys_are_checked_before_anything_loads(override, message):
    overrides = [override] if override.startswith("teacher.server=") else ["teacher.server=http://127.0.0.1:1/v1",
                                                                            override]
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


@pytest.mark.parametrize("overrides,message", [
    (["rollout.source=teacher", "rollout.lmbda=1"], "scores text but does not write rollouts"),
    (["rollout.source=student", "rollout.lmbda=1", "rollout.teacher_mix=0.5"], "rollout.teacher_mix=0"),
    (["loss.terms=[{kind: forward_kl, weight: 1}, {kind: hidden_mse, weight: 0.1}]"], "gives only its top-K"),
])
def test_what_a_server_cannot_give_is_refused_before_anything_loads(overrides, message):
    with pytest.raises(ConfigError, match=message):  # the preflight check (run/preflight.py)
        check_supported(load_config(None, ["teacher.server=http://127.0.0.1:1/v1", *overrides]))
