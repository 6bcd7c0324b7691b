"""`kdistill export` end to end on the tiny student: files written, table printed, bad input refused."""
import argparse
import importlib.util

import pytest
import torch
from gguf import GGUFReader
from transformers import AutoModelForCausalLM

from kdistill.base.errors import DataError, KdistillError, ModelError
from kdistill.commands import export as cli
from kdistill.export import bounds, load_quantized
from kdistill.export.bounds import EXPECTED_KL


def parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kdistill export")
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def run(argv) -> int:
    return cli.main(parse(argv))


def run_export(a) -> dict:
    """What `kdistill export` with these parsed options returns through the API."""
    from kdistill import api

    return api.export(a.model, a.format, a.type, a.out, group_size=a.group_size, max_bits=a.max_bits,
                      calibration=a.calibration, keep_embeddings=a.keep_embeddings, data=a.data,
                      seq_len=a.seq_len, max_tokens=a.max_tokens, measure=not a.no_eval)


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
    printed = capsys.readouterr().out
    assert "int4 candidates" in printed and "int4 (group " in printed and "expected KL" in printed
    assert load_quantized(out).kdistill_quantization["scheme"] == "int4"


def test_int4_within_its_bound_no_worse_than_q4_0_and_loads_in_transformers(student_dir, tmp_path):
    """At Q4_0's size (--max-bits 4.5) and at the default 5 bits, on the same held-out text as GGUF Q4_0
    through the GGUF writer and transformers' reader."""
    q4_0 = run_export(parse(["--model", str(student_dir), "--format", "gguf", "--type", "Q4_0",
                                 "--out", str(tmp_path / "s.gguf")]))["report"]
    same_size = run_export(parse(["--model", str(student_dir), "--format", "int4", "--max-bits", "4.5",
                                      "--out", str(tmp_path / "s-4.5")]))
    default = run_export(parse(["--model", str(student_dir), "--format", "int4", "--out", str(tmp_path / "s")]))
    assert same_size["report"]["kl_mean"] <= q4_0["kl_mean"] and default["report"]["kl_mean"] < q4_0["kl_mean"]
    assert default["report"]["kl_mean"] <= EXPECTED_KL["int4"] and default["warning"] is None
    assert same_size["report"]["bytes_after"] <= q4_0["bytes_after"] * 1.05
    ids = torch.tensor([[5, 17, 99, 250, 3, 42]])
    with torch.no_grad():
        expected = load_quantized(tmp_path / "s")(ids).logits
        if importlib.util.find_spec("compressed_tensors"):
            loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "s").eval()
            torch.testing.assert_close(loaded(ids).logits, expected, rtol=0, atol=0)


def test_a_kl_above_the_bound_is_a_warning(student_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(bounds.EXPECTED_KL, "int8", 1e-12)
    result = run_export(parse(["--model", str(student_dir), "--format", "int8", "--out", str(tmp_path / "q")]))
    err = capsys.readouterr().err
    assert result["warning"] and "warning: this int8 export's KL" in err and "Q8_0" in err


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
    with pytest.raises(KdistillError, match="--max-bits 4.0"):
        run(["--model", str(student_dir), "--format", "int4", "--max-bits", "4"])
    with pytest.raises(ModelError, match="multiple of 8"):
        run(["--model", str(student_dir), "--format", "int4", "--group-size", "20"])
    with pytest.raises(DataError, match="nothing.txt"):
        run(["--model", str(student_dir), "--format", "int4", "--calibration", str(tmp_path / "nothing.txt")])
