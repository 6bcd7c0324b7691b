"""The GPU loss benchmark's own checks, run on the CPU at a small, odd shape."""
import pytest
import torch

from kdistill.commands import bench_cuda


def test_ours_agrees_with_the_full_logit_reference_in_float32():
    x = bench_cuda.make_inputs(37, 24, 517, torch.float32, torch.device("cpu"), seed=3)
    errors = bench_cuda.agreement({"ours": lambda x: bench_cuda.run_ours(x, budget_mb=0.01),
                                   "plain": bench_cuda.run_plain}, x)
    assert set(errors) == {"ours"}
    for value in errors["ours"].values():
        assert value < 1e-5
    assert x["hidden"].grad is None and x["weight"].grad is None  # the timed runs start clean


def test_a_wrong_method_is_caught_by_the_agreement_check():
    x = bench_cuda.make_inputs(19, 16, 211, torch.float32, torch.device("cpu"))
    errors = bench_cuda.agreement({"ours": lambda x: bench_cuda.run_ours(x, beta=0.3), "plain": bench_cuda.run_plain}, x)
    assert errors["ours"]["loss"] > 1e-3


def test_main_on_the_cpu_prints_every_method(capsys):
    assert bench_cuda.main(["--device", "cpu", "--tokens", "33", "--hidden", "16", "--vocab", "301",
                            "--dtype", "float32", "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    assert "liger_kernel not found" in out
    assert "ours against plain" in out
    assert out.count("median") == 2


def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit) as exc:
        bench_cuda.main(["--tokens", "8"])
    assert exc.value.code == 2
    assert "no CUDA device here" in capsys.readouterr().err
