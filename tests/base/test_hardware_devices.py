"""Device and precision choices from what the machine has, checked with CUDA and MPS faked (CI has neither):
`auto` picks CUDA, else MPS, else CPU; a device or a precision the machine lacks is a ConfigError that names
the key and the fix, raised by the preflight before any model loads."""
import pytest
import torch

from kdistill.base import hardware
from kdistill.base.errors import ConfigError
from kdistill.config.schema import load_config


@pytest.fixture
def machine(monkeypatch):
    """Fake what the machine has: machine(cuda=True, bf16=False, mps=False)."""
    def have(cuda=False, bf16=True, mps=False):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda and bf16)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    return have


@pytest.mark.parametrize("cuda, mps, picked", [(True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"),
                                               (False, False, "cpu")])
def test_auto_picks_cuda_then_mps_then_cpu(machine, cuda, mps, picked):
    machine(cuda=cuda, mps=mps)
    assert hardware.pick_device("auto").type == picked


def test_mps_asked_for_on_a_machine_without_it_names_the_key(machine):
    machine(mps=False)
    with pytest.raises(ConfigError) as e:
        hardware.pick_device("mps")
    assert str(e.value).startswith("train.device=mps: Apple's MPS backend is not available")
    assert "train.device=auto or train.device=cpu" in str(e.value)
    machine(mps=True)
    assert hardware.pick_device("mps").type == "mps"


@pytest.mark.parametrize("cuda, bf16, mps, auto", [(True, True, False, "bf16"), (True, False, False, "fp16"),
                                                   (False, True, True, "fp32"), (False, True, False, "fp32")])
def test_auto_precision_is_bf16_on_cuda_with_it_fp16_without_and_fp32_elsewhere(machine, cuda, bf16, mps, auto):
    machine(cuda=cuda, bf16=bf16, mps=mps)
    device = hardware.pick_device("auto")
    assert hardware.pick_precision("auto", device) == auto
    assert hardware.pick_dtype("auto", device) == (torch.bfloat16 if auto == "bf16" else torch.float32)


def test_bf16_on_a_gpu_without_it_says_use_fp16(machine):
    machine(cuda=True, bf16=False)
    with pytest.raises(ConfigError) as e:
        hardware.pick_precision("bf16", torch.device("cuda"))
    message = str(e.value)
    assert message.startswith("train.precision=bf16: this GPU (Tesla T4) has no bf16")
    assert "train.precision=fp16" in message and "train.precision=auto" in message
    assert hardware.pick_precision("fp16", torch.device("cuda")) == "fp16"


def test_a_precision_that_is_not_one_names_the_choices():
    with pytest.raises(ConfigError, match=r"train.precision='half' is not a precision; choose one of auto, fp32"):
        hardware.pick_precision("half", torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"train.precision .*unknown precision 'fp61'.*did you mean 'fp16'"):
        load_config(None, ["train.precision=fp61"])  # the value alone: checked with the config, no device


def test_every_precision_runs_on_cpu_and_auto_there_is_fp32():
    cpu = torch.device("cpu")
    assert [hardware.pick_precision(p, cpu) for p in hardware.PRECISIONS] == ["fp32", "fp32", "bf16", "fp16"]
    a = torch.randn(4, 4)
    with hardware.autocast(cpu):
        assert (a @ a).dtype == torch.float32  # auto on CPU: no autocast
    with hardware.autocast(cpu, precision="fp16"):
        assert (a @ a).dtype == torch.float16
    with hardware.autocast(cpu, enabled=False, precision="fp16"):
        assert (a @ a).dtype == torch.float32


def test_the_preflight_refuses_bf16_on_a_gpu_without_it_before_any_model_loads(machine, monkeypatch):
    from kdistill.models import teacher
    from kdistill.run import preflight

    machine(cuda=True, bf16=False)
    monkeypatch.setattr(teacher, "resolve", lambda *a: pytest.fail("the teacher was looked up before the check"))
    with pytest.raises(ConfigError, match=r"train.precision=bf16: this GPU \(Tesla T4\) has no bf16"):
        preflight.check_teacher(load_config(None, ["train.precision=bf16"]))
