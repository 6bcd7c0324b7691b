"""A run folder's config.yaml from an earlier kdistill still loads; a user's own file does not get that leniency."""
import pytest

from kdistill.base.errors import ConfigError
from kdistill.config.legacy import load_run_config
from kdistill.config.schema import load_config


def test_threads_0_of_an_earlier_run_reads_as_auto(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("train:\n  threads: 0\n  max_steps: 7\noutput_dir: runs/old\n")
    cfg = load_run_config(path)
    assert cfg.train.threads == "auto" and cfg.train.max_steps == 7
    with pytest.raises(ConfigError, match="train.threads"):
        load_config(path)  # a config the user runs: 0 is refused, naming the key


def test_other_values_are_read_unchanged(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("train:\n  threads: 3\n")
    assert load_run_config(path).train.threads == 3
    path.write_text("train:\n  threads: -1\n")
    with pytest.raises(ConfigError, match="train.threads"):
        load_run_config(path)
