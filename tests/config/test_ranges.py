"""Every numeric key declares its range beside it, and a value outside it (or not finite, or an empty value
of a key that needs one) is refused when the config loads, through the CLI: exit 2 naming the key."""
import dataclasses
import math
import typing

import pytest

from kdistill import api
from kdistill.base.errors import ConfigError
from kdistill.commands import cli
from kdistill.config.ranges import is_numeric, leaves, parse_range
from kdistill.config.schema import Config, load_config, validate

NUMERIC = [(path, f, tp) for path, f, _, tp in leaves(Config()) if is_numeric(tp)]


def _floats(tp) -> bool:
    return float in (typing.get_args(tp) or (tp,))


def outside(f, tp) -> list[str]:
    """Values just outside the key's range, and (for a float key) the numbers that are not finite."""
    rng = f.metadata["range"]
    bad = []
    if math.isfinite(rng.low):
        bad.append(rng.low if rng.low_open else rng.low - 1)
    if math.isfinite(rng.high):
        bad.append(rng.high if rng.high_open else rng.high + 1)
    text = [f"[{int(x)}]" if typing.get_origin(tp) is list or list in map(typing.get_origin, typing.get_args(tp))
            else (f"{x:g}" if _floats(tp) else str(int(x))) for x in bad]
    return text + (["nan", ".inf", "-.inf"] if _floats(tp) else [])


CASES = [(path, value) for path, f, tp in NUMERIC if "range" in f.metadata for value in outside(f, tp)]


def test_every_numeric_key_declares_its_range():
    missing = [path for path, f, _ in NUMERIC if "range" not in f.metadata]
    assert not missing, f"numeric keys without a range (declare one with ranged(...)): {missing}"
    paths = [path for path, _, _ in NUMERIC]
    for nested in ("data.generate.cot.memory_mb", "data.generate.filter.ngram", "teacher.server_top_k",
                   "train.threads", "student.layers", "rollout.lmbda"):  # every section, nested ones too
        assert nested in paths


def test_the_defaults_are_in_range():
    validate(Config())


@pytest.mark.parametrize("path, value", CASES, ids=[f"{p}={v}" for p, v in CASES])
def test_a_value_outside_the_range_is_refused_by_the_cli_naming_the_key(path, value, capsys, monkeypatch):
    monkeypatch.setattr(api, "distill", lambda *a, **k: pytest.fail("the config loaded: a model would load now"))
    assert cli.main(["distill", f"{path}={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"kdistill distill: error: {path}") and "\n" not in err, err
    assert "must be" in err, err


@pytest.mark.parametrize("override, message", [
    ("train.lr=.inf", "train.lr=inf (command line) must be a finite number above 0"),
    ("train.weight_decay=-1", "train.weight_decay=-1.0 (command line) must be at least 0"),
    ("train.min_lr_ratio=-0.5", "train.min_lr_ratio=-0.5 (command line) must be between 0 and 1"),
    ("train.threads=-3", "train.threads=-3 (command line) must be at least 1, or auto"),
    ("train.threads=0", "train.threads=0 (command line) must be at least 1, or auto"),
    ("train.threads=many", "train.threads (command line): 'many' is not a valid int (nor auto)"),
    ("eval.max_batches=0", "eval.max_batches=0 (command line) must be at least 1, or empty (empty = all)"),
    ("data.max_records=0", "data.max_records=0 (command line) must be at least 1, or empty (empty = all)"),
    ("train.grad_clip=-1", "train.grad_clip=-1.0 (command line) must be at least 0, or empty (0 or empty = no clip"),
    ("student.layers=[2, -1]", "student.layers[1]=-1 (command line) must be at least 0 (each a teacher layer"),
])
def test_the_issue_39_values_are_refused_with_the_range(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_threads_takes_auto_or_a_count_and_empty_means_all_where_declared():
    assert Config().train.threads == "auto" and load_config(None, ["train.threads=auto"]).train.threads == "auto"
    assert load_config(None, ["train.threads=2"]).train.threads == 2
    cfg = load_config(None, ["eval.max_batches=", "data.max_records=", "train.grad_clip=0"])
    assert cfg.eval.max_batches is None and cfg.data.max_records is None and cfg.train.grad_clip == 0


def test_a_range_error_from_a_file_names_the_file_and_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("student:\n  num_layers: 2\ntrain:\n  seed: 1\n  min_lr_ratio: -0.5\n")
    with pytest.raises(ConfigError, match=rf"train.min_lr_ratio=-0.5 \({f}, line 5\) must be between 0 and 1"):
        load_config(f)
    with pytest.raises(ConfigError, match=r"train.min_lr_ratio=2.0 \(command line\)"):
        load_config(f, ["train.min_lr_ratio=2"])  # the override set it last
    assert load_config(f, ["train.min_lr_ratio=0.5"]).train.min_lr_ratio == 0.5


STRINGS = [path for path, _, _, tp in leaves(Config()) if tp is str]


@pytest.mark.parametrize("path", STRINGS)
def test_a_key_that_needs_a_value_refuses_empty(path):
    for text in (f"{path}=", f"{path}=''"):
        with pytest.raises(ConfigError, match=rf"^{path} \(command line\) cannot be empty"):
            load_config(None, [text])


def test_empty_output_dir_is_refused_by_the_cli_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["distill", "output_dir="]) == 2
    assert "output_dir (command line) cannot be empty" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no ./None


def test_a_config_built_in_code_gets_the_same_checks():
    for section, key, value, message in [("train", "lr", math.inf, "train.lr=inf must be a finite number"),
                                         ("train", "threads", -3, "train.threads=-3 must be at least 1, or auto"),
                                         ("train", "threads", "many", "train.threads='many' must be"),
                                         ("data", "max_records", 0, "data.max_records=0 must be at least 1"),
                                         ("eval", "max_batches", True, "eval.max_batches=True must be")]:
        cfg = Config()
        setattr(getattr(cfg, section), key, value)
        with pytest.raises(ConfigError, match=message):
            validate(cfg)
    cfg = dataclasses.replace(Config(), output_dir="")
    with pytest.raises(ConfigError, match="output_dir cannot be empty"):
        validate(cfg)


@pytest.mark.parametrize("spec, inside, outside_, text", [
    (">= 1", [1, 5], [0.5, -1], "at least 1"),
    ("> 0", [1e-9], [0, -1], "above 0"),
    ("<= 0", [0, -3], [0.1], "at most 0"),
    ("[0, 1]", [0, 1], [-0.1, 1.1], "between 0 and 1"),
    ("(0, 1]", [1, 0.5], [0], "in (0, 1]"),
    ("[0, 1)", [0], [1], "in [0, 1)"),
])
def test_range_grammar(spec, inside, outside_, text):
    rng = parse_range(spec)
    assert rng.text() == text
    assert all(rng.holds(x) for x in inside) and not any(rng.holds(x) for x in outside_)


def test_a_malformed_range_is_a_programming_error():
    with pytest.raises(ValueError, match="not a range"):
        parse_range("positive")
