"""`kdistill export` end to end on the tiny student: files written, table printed, bad input refused."""
import argparse

import pytest
from gguf import GGUFReader

from kdistill.errors import DataError, KdistillError, ModelError
from kdistill.export import cli, load_quantized


def run(argv) -> int:
    parser = argparse.ArgumentParser(prog="kdistill export")
    cli.add_arguments(parser)
    return cli.main(parser.parse_args(argv))


def test_help_shows_examples():
    parser = argparse.ArgumentParser(prog="kdistill export")
    cli.add_arguments(parser)
    text = parser.format_help()
    assert "kdistill export --model runs/student/final --format gguf --type Q4_0" in text
    assert "--keep-embeddings" in text and "Q8_0" in text


def test_gguf_export_prints_the_table(student_dir, tmp_path, capsys):
    out = tmp_path / "s-q8_0.gguf"
    assert run(["--model", str(student_dir), "--format", "gguf", "--type", "Q8_0", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "GGUF Q8_0" in table and "KL(fp32 || out) mean" in table and "memory saved" in table
    assert len(GGUFReader(out).tensors) == 20


def test_int4_export_with_held_out_file(student_dir, tmp_path, capsys):
    data = tmp_path / "heldout.txt"
    data.write_text("The fox ran over the hill and the king opened the gates of the castle. " * 5)
    out = tmp_path / "s-int4"
    assert run(["--model", str(student_dir), "--format", "int4", "--out", str(out), "--data", str(data)]) == 0
    assert "int4 (group 32, vocab int8)" in capsys.readouterr().out
    assert load_quantized(out).kdistill_quantization["scheme"] == "int4"


def test_default_output_name_and_no_eval(student_dir, capsys):
    assert run(["--model", str(student_dir), "--format", "gguf", "--type", "F16", "--no-eval"]) == 0
    out = student_dir.parent / f"{student_dir.name}-f16.gguf"
    assert out.is_file() and "KL" not in capsys.readouterr().out


def test_bad_inputs_raise_user_errors(student_dir, tmp_path):
    with pytest.raises(DataError, match="missing.txt"):
        run(["--model", str(student_dir), "--format", "int8", "--data", str(tmp_path / "missing.txt")])
    with pytest.raises(ModelError, match="no config.json"):
        run(["--model", str(tmp_path), "--format", "int8"])
    with pytest.raises(KdistillError, match="--type Q4_0 is a GGUF tensor type"):
        run(["--model", str(student_dir), "--format", "int4", "--type", "Q4_0"])
