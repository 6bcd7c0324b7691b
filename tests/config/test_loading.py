"""Reading values: a key given twice in a YAML file (or an override) is refused naming the file, the line
and the key; every list key takes a single value as a list of one, on the command line and in YAML."""
import json
import typing

import pytest
import yaml

from kdistill.base.errors import ConfigError
from kdistill.commands import cli
from kdistill.config.choices import choices
from kdistill.config.ranges import leaves
from kdistill.config.schema import Config, load_config


@pytest.mark.parametrize("text, message", [
    ("train:\n  lr: 1e-3\nstudent:\n  num_layers: 2\ntrain:\n  max_steps: 3\n",
     "line 5: train is given twice (first at line 1)"),
    ("train:\n  lr: 1e-3\n  seed: 1\n  lr: 2e-3\n", "line 4: train.lr is given twice (first at line 2)"),
    ("data:\n  generate:\n    cot: {mode: code, mode: program}\n",
     "line 3: data.generate.cot.mode is given twice (first at line 3)"),
    ("loss:\n  terms:\n    - kind: ce\n    - kind: jsd\n      weight: 1\n      weight: 2\n",
     "line 6: loss.terms[1].weight is given twice (first at line 5)"),
    ("output_dir: a\noutput_dir: b\n", "line 2: output_dir is given twice (first at line 1)"),
])
def test_a_key_given_twice_in_a_file_names_the_file_line_and_key(tmp_path, text, message):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert str(err.value).startswith(f"{f}, {message}"), err.value
    assert "keep one of them" in str(err.value)


def test_the_same_name_in_two_sections_is_not_a_duplicate(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  seed: 1\n  batch_size: 4\ncache:\n  seed: 2\n  batch_size: 2\n")
    cfg = load_config(f)
    assert (cfg.train.seed, cfg.cache.seed, cfg.train.batch_size, cfg.cache.batch_size) == (1, 2, 4, 2)


def test_a_duplicate_is_refused_by_the_cli_with_exit_2(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  max_steps: 3\ntrain:\n  max_steps: 4\n")
    assert cli.main(["config", "show", "--config", str(f)]) == 2
    assert f"{f}, line 3: train is given twice" in capsys.readouterr().err
    assert cli.main(["config", "show", "loss.terms=[{kind: ce, kind: jsd}]"]) == 2
    assert "loss.terms[0].kind is given twice" in capsys.readouterr().err


def _list_type(tp):
    """The list type inside `tp` (`list[int] | None` -> list[int]), else None."""
    if typing.get_origin(tp) is list:
        return tp
    return next((a for a in typing.get_args(tp) if typing.get_origin(a) is list), None)


# A single value for each list key whose items are mappings (the others are made from the item type).
MAPPING_SAMPLES = {"loss.terms": {"kind": "reverse_kl"}, "teacher.sources": {"name": "a", "model": "default"}}
LISTS = [(path, _list_type(tp)) for path, _, _, tp in leaves(Config()) if _list_type(tp) is not None]


def sample(path: str, list_tp):
    """One valid item for list key `path`: a mapping from MAPPING_SAMPLES, a choice, a number or a word."""
    item = typing.get_args(list_tp)[0]
    names = choices(list_tp)
    if names:
        return names[-1]
    if item is int:
        return 3
    if item is str:
        return "some words, with a comma"
    assert path in MAPPING_SAMPLES, f"{path}: add a single value for this list key to MAPPING_SAMPLES"
    return MAPPING_SAMPLES[path]


def _flow(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def _get(cfg, path):
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_every_list_key_is_walked():
    paths = [p for p, _ in LISTS]
    for path in ("train.tracker", "loss.terms", "teacher.sources", "student.layers", "eval.prompts",
                 "data.generate.filter.contamination_files"):
        assert path in paths


@pytest.mark.parametrize("path, list_tp", LISTS, ids=[p for p, _ in LISTS])
def test_every_list_key_takes_a_single_value_as_a_list_of_one(path, list_tp, tmp_path):
    value = sample(path, list_tp)
    assert _get(load_config(None, [f"{path}={_flow(value)}"]), path) == [value]
    f = tmp_path / "c.yaml"
    head, _, last = path.rpartition(".")
    lines = [f"{'  ' * i}{part}:" for i, part in enumerate(head.split("."))] if head else []
    f.write_text("\n".join([*lines, f"{'  ' * len(lines)}{last}: {_flow(value)}"]) + "\n")
    assert _get(load_config(f), path) == [value]
    if not isinstance(value, dict):  # a list of several is still a list (sources need distinct names)
        assert _get(load_config(None, [f"{path}={json.dumps([value, value])}"]), path) == [value, value]


def test_tracker_tensorboard_through_the_cli(capsys):
    assert cli.main(["config", "show", "train.tracker=tensorboard"]) == 0
    assert "tracker: [tensorboard]" in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"train.tracker\[0\] \(command line\): unknown tracker 'tensorbord'"):
        load_config(None, ["train.tracker=tensorbord"])
    assert load_config(None, ["eval.tasks="]).eval.tasks == []  # empty: no items
