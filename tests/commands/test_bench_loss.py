"""`kdistill bench loss` on a tiny shape: both methods run, agree on the value, and the ratios print."""
import argparse
import re

from kdistill.commands import bench_loss as bench


def parse(*argv):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def test_bench_prints_both_methods_and_ratios(capsys, monkeypatch):
    args = parse("--tokens", 64, "--vocab", 300, "--hidden", 16, "--repeat", 1, "--chunk-size", 16)
    monkeypatch.setattr(bench, "_spawn", lambda method, argv: bench.timing_worker(args) if method == "timing"
                        else bench.worker(method, args))  # no subprocess
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("reference ", "ours "))}
    assert rows["reference"][3] == rows["ours"][3]  # same forward KL value (6 decimals)
    assert "ratio ours/reference: time" in out and "peak memory" in out and "16 rows/chunk (given)" in out
    assert re.search(r"ratio ours/floor: time \d+\.\d+", out) and re.search(r"^floor\s+\d", out, re.M)
    assert re.search(r"^autograd\s+\d", out, re.M) and re.search(r"^torch_passes\s+\d", out, re.M)
    assert rows["reference"][3] == next(l.split()[3] for l in out.splitlines() if l.startswith("torch_passes "))
    assert re.search(r"ours/torch_passes: time \d+\.\d+", out)


def test_worker_runs_in_a_fresh_process():
    args = parse("--tokens", 32, "--vocab", 50, "--hidden", 8, "--repeat", 2, "--teacher", "logits",
                 "--divergence", "jsd")
    result = bench._spawn("ours", bench._argv(args))
    assert result["peak_extra_mib"] >= 0 and result["loss"] > 0


def test_timing_alternates_every_method_each_round():
    args = parse("--tokens", 32, "--vocab", 50, "--hidden", 8, "--repeat", 3, "--teacher", "logits")
    times = bench._spawn("timing", bench._argv(args))
    assert set(times) == set(bench.METHODS) and all(len(t) == 3 and min(t) > 0 for t in times.values())
