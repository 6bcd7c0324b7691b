"""The CLI parser is quick (no torch, no transformers), keeps every option, and `--version` answers."""
import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from kdistill.commands import args as cli_args
from kdistill.commands import cli

ROOT = Path(__file__).parents[2]
SUBCOMMANDS = [[name] for name, _, _ in cli_args.SUBCOMMANDS] + [["bench", "loss"], ["config", "show"]]


def test_building_the_parser_and_every_help_imports_no_torch_or_transformers():
    code = ("import sys, contextlib, io\nfrom kdistill.commands.cli import build_parser\n"
            f"for argv in {[['--help']] + [s + ['--help'] for s in SUBCOMMANDS]!r}:\n"
            "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "        build_parser().parse_args(argv)\n"
            "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("argv", [["--help"]] + [s + ["--help"] for s in SUBCOMMANDS])
def test_every_help_ends_with_an_example(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(argv)
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "usage: kdistill" in text
    if argv[0] not in ("bench", "config") or len(argv) == 3 and argv[1] == "loss":
        assert "kdistill " + (argv[0] if argv[0] != "--help" else "distill") in text.split("usage:")[-1]


def test_version(capsys):
    import kdistill

    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"kdistill {kdistill.__version__}"


def test_choices_match_the_constants_they_mirror():
    from kdistill.commands.bench_loss import DTYPES
    from kdistill.export.gguf_writer import QTYPES
    from kdistill.export.quantize import SCHEMES
    from kdistill.losses.config import KINDS

    assert tuple(QTYPES) == cli_args.GGUF_TYPES and tuple(SCHEMES) == cli_args.INT_SCHEMES
    assert tuple(k for k in KINDS if k != "ce") == cli_args.BENCH_DIVERGENCES
    assert tuple(DTYPES) == cli_args.BENCH_DTYPES


def _options(add) -> dict:
    parser = argparse.ArgumentParser()
    add(parser)
    return {a.dest: (tuple(a.option_strings), a.default, tuple(a.choices or ()), a.type, a.required)
            for a in parser._actions}


def test_light_argument_definitions_equal_the_modules_own():
    from kdistill.commands import bench_loss as bench
    from kdistill.commands import design

    assert _options(cli_args.bench_loss_arguments) == _options(bench.add_arguments)
    assert _options(cli_args.design_arguments) == _options(design.add_arguments)
