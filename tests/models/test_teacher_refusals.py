"""Folders kdistill refuses before transformers sees them, each with one clear error naming folder and fix."""
import builtins
import json
import shutil
from pathlib import Path

import pytest
import torch

from kdistill.base.errors import ConfigError, ModelError
from kdistill.base.hardware import pick_device, pick_dtype
from kdistill.commands.cli import main
from kdistill.models.files import check_model_folder
from kdistill.models.teacher import load_teacher

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _never_prompt(monkeypatch):
    """transformers asks "run the custom code? [y/N]" through input(); none of these may get that far."""
    def refuse(*_):
        raise AssertionError("transformers prompted for remote code")
    monkeypatch.setattr(builtins, "input", refuse)


@pytest.fixture
def folder(teacher_dir, tmp_path) -> Path:
    """A writable copy of the tiny teacher, to be damaged by each test."""
    return Path(shutil.copytree(teacher_dir, tmp_path / "teacher"))


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def pickle_only(folder: Path) -> None:
    model, _, _ = load_teacher(str(folder), CPU, torch.float32)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()


def test_pickled_weights_need_allow_pickle(folder):
    reference, _, _ = load_teacher(str(folder), CPU, torch.float32)
    pickle_only(folder)
    with pytest.raises(ModelError, match=rf"{folder}.*pytorch_model.bin.*teacher.allow_pickle=true.*safetensors"):
        load_teacher(str(folder), CPU, torch.float32)
    model, _, _ = load_teacher(str(folder), CPU, torch.float32, allow_pickle=True)
    ids = torch.tensor([[1, 5, 7, 9]])
    torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits)


def test_truncated_safetensors_is_named(folder):
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=rf"{weights} is truncated or corrupted"):
        load_teacher(str(folder), CPU, torch.float32)


def test_corrupted_safetensors_header_is_named(folder):
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:40] = b"#" * 32  # the JSON header starts after its 8-byte length
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=rf"{weights} is truncated or corrupted"):
        load_teacher(str(folder), CPU, torch.float32)


def test_missing_shard_is_named(folder):
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00002.safetensors"}}))
    with pytest.raises(ModelError, match="model-00002.safetensors"):
        load_teacher(str(folder), CPU, torch.float32)


@pytest.mark.parametrize("file, changes", [
    ("config.json", {"auto_map": {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}}),
    ("config.json", {"model_type": "x-custom", "auto_map": {"AutoConfig": "configuration_x.XConfig"}}),
    ("tokenizer_config.json", {"auto_map": {"AutoTokenizer": ["tokenization_x.XTokenizer", None]}}),
])
def test_remote_code_needs_trust_remote_code(folder, file, changes):
    edit_json(folder / file, **changes)
    with pytest.raises(ModelError, match=rf"{folder}: {file}.*auto_map.*teacher.trust_remote_code=true"):
        load_teacher(str(folder), CPU, torch.float32)


def test_trusted_remote_code_passes_the_check(folder):
    edit_json(folder / "config.json", model_type="x-custom", auto_map={"AutoConfig": "configuration_x.XConfig"})
    assert check_model_folder(folder, "teacher", trust_remote_code=True) is True


@pytest.mark.parametrize("changes, message", [
    ({"model_type": "nosuchmodel"}, "model_type 'nosuchmodel' is not an architecture transformers"),
    ({"model_type": "t5"}, "model_type 't5' has no causal-LM class"),
    ({"architectures": ["LlamaForSequenceClassification"]}, "LlamaForSequenceClassification.*is not a causal LM"),
])
def test_architecture_that_is_not_a_causal_lm(folder, changes, message):
    edit_json(folder / "config.json", **changes)
    with pytest.raises(ModelError, match=rf"teacher {folder}: .*{message}"):
        load_teacher(str(folder), CPU, torch.float32)


def test_folder_without_weights(folder):
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=rf"{folder}: no weights"):
        load_teacher(str(folder), CPU, torch.float32)


def test_misspelt_dtype_lists_the_names():
    with pytest.raises(ConfigError, match="teacher.dtype='fp33'.*float32.*bf16"):
        pick_dtype("fp33", CPU)


def test_cuda_without_cuda():  # conftest hides any GPU outside tests/gpu
    with pytest.raises(ConfigError, match="train.device=cuda: CUDA is not available"):
        pick_device("cuda")
    with pytest.raises(ConfigError, match="train.device='gpu' is not a device"):
        pick_device("gpu")


def one_line_error(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def remote_code_folder(folder: Path) -> Path:
    edit_json(folder / "config.json", auto_map={"AutoModelForCausalLM": "modeling_x.XForCausalLM"})
    (folder / "modeling_x.py").write_text("raise SystemExit('custom code ran')\n")
    return folder


def test_generate_refuses_remote_code(folder, capsys):
    code = main(["generate", "--model", str(remote_code_folder(folder)), "Once upon a time"])
    one_line_error(capsys, code, "kdistill generate: error:", str(folder), "auto_map")


@pytest.mark.parametrize("fmt", ["gguf", "int8"])
def test_export_refuses_remote_code(folder, tmp_path, capsys, fmt):
    code = main(["export", "--model", str(remote_code_folder(folder)), "--format", fmt, "--no-eval",
                 "--out", str(tmp_path / "out")])
    one_line_error(capsys, code, "kdistill export: error:", str(folder), "auto_map")
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_folder_without_weights(folder, tmp_path, capsys):
    (folder / "model.safetensors").unlink()
    code = main(["export", "--model", str(folder), "--format", "int8", "--no-eval", "--out", str(tmp_path / "o")])
    one_line_error(capsys, code, str(folder), "no weights")


def test_eval_refuses_a_student_without_weights(folder, teacher_dir, capsys):
    (folder / "model.safetensors").unlink()
    code = main(["eval", "--student", str(folder), "--teacher", teacher_dir, "--data", str(folder / "config.json"),
                 "--no-speed"])
    one_line_error(capsys, code, "kdistill eval: error: --student", str(folder), "no weights")


def test_generate_refuses_pickles(folder, capsys):
    pickle_only(folder)
    code = main(["generate", "--model", str(folder), "hi"])
    one_line_error(capsys, code, str(folder), "pickled", "safetensors")


@pytest.mark.parametrize("damage", [
    lambda good: b"\x80\x04 not a pickle at all",              # garbage
    lambda good: good[: len(good) // 2],                        # a truncated torch.save file
    lambda good: b"",                                           # an empty file
    lambda good: __import__("pickle").dumps(print),             # more than tensors: refused by weights_only
], ids=["garbage", "truncated", "empty", "not-only-tensors"])
def test_allowed_pickle_that_does_not_unpickle_is_named(folder, damage):
    pickle_only(folder)
    weights = folder / "pytorch_model.bin"
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(ModelError, match=rf"teacher {folder}: cannot unpickle {weights} \(.*\); the file is damaged"):
        load_teacher(str(folder), CPU, torch.float32, allow_pickle=True)
