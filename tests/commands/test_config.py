"""`kdistill config show | list | cp`: every key with its meaning, output that loads back, shipped configs."""
import dataclasses

import pytest
import yaml

from kdistill.commands import cli
from kdistill.commands.config import CONFIGS, field_docs, show
from kdistill.config.schema import Config, load_config


def leaf_paths(obj, prefix=""):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        path = f"{prefix}{f.name}"
        yield from leaf_paths(value, path + ".") if dataclasses.is_dataclass(value) else [path]


def test_show_covers_every_field_and_loads_back_to_the_same_config(tmp_path):
    cfg = load_config(CONFIGS / "demo.yaml", ["train.max_steps=7", "loss.terms=[{kind: reverse_kl}]"])
    text = show(cfg)
    data = yaml.safe_load(text)
    for path in leaf_paths(cfg):
        node = data
        for part in path.split("."):
            assert part in node, f"{path} missing from config show"
            node = node[part]
    (tmp_path / "shown.yaml").write_text(text)
    assert load_config(tmp_path / "shown.yaml") == cfg


def test_show_comments_each_documented_field():
    text = show(Config())
    docs = field_docs(type(Config().teacher))
    assert docs["model"].startswith("Hub id")
    assert f"  # {docs['model'].splitlines()[0]}\n  model: default" in text
    assert "# `kdistill cache`: the teacher's signal" in text  # a section's class docstring


def test_cli_show_list_cp(tmp_path, capsys):
    assert cli.main(["config", "show", "train.seq_len=64"]) == 0
    assert "seq_len: 64" in capsys.readouterr().out
    assert cli.main(["config", "list"]) == 0
    listing = capsys.readouterr().out
    assert "demo " in listing and "The default demo" in listing
    dst = tmp_path / "mine.yaml"
    assert cli.main(["config", "cp", "demo", str(dst)]) == 0
    assert dst.read_text() == (CONFIGS / "demo.yaml").read_text()
    capsys.readouterr()
    assert cli.main(["config", "cp", "demo", str(dst)]) == 2  # exists: refused
    assert "--force" in capsys.readouterr().err
    assert cli.main(["config", "cp", "demo.yaml", str(dst), "--force"]) == 0
    assert cli.main(["config", "cp", "dmeo", str(tmp_path / "x.yaml")]) == 2
    assert "did you mean 'demo'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("*.yaml")))
def test_every_shipped_config_shows_and_loads_back(name, tmp_path):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    (tmp_path / "c.yaml").write_text(show(cfg))
    assert load_config(tmp_path / "c.yaml") == cfg


def test_show_lists_the_choices_of_each_typed_key():
    text = show(Config())
    assert "  # choices: sum, route\n  combine: sum" in text
    assert "  # choices: jsonl, tensorboard, aim, wandb\n  tracker: [jsonl]" in text
    assert "# choices: auto, teacher-width-4l" in text  # student.preset: the presets table's names
    assert "# each term's kind: forward_kl, reverse_kl" in text


def test_the_reference_lists_every_key_with_type_default_and_choices(capsys):
    from kdistill.commands.config import reference

    text = reference()
    for path in leaf_paths(Config()):
        assert f"| `{path}` |" in text, f"{path} missing from the reference"
    assert "| `teacher.combine` | choice | `sum` | `sum`, `route` | How `sources` combine" in text
    assert "| `train.lr` | float or empty | empty |" in text
    assert "| `nano` | 4 | 128 | 4 | 2 | 384 |" in text  # the presets table
    assert cli.main(["config", "reference"]) == 0
    assert capsys.readouterr().out == text


def test_docs_configuration_md_is_the_generated_reference():
    from kdistill.commands.config import REFERENCE, REGENERATE, reference

    assert REFERENCE.is_file() and REFERENCE.read_text() == reference(), (
        f"{REFERENCE} differs from the config schema; regenerate it: {REGENERATE}")
