"""A teacher bigger than memory: layers that do not fit `max_memory` go to disk, and the logits stay the same."""
import os
from pathlib import Path

import pytest
import torch
from helpers import save_tiny_teacher

from kdistill.base.errors import ConfigError, ModelError
from kdistill.models.teacher import is_dispatched, load_teacher, parse_memory, placement

CPU = torch.device("cpu")
IDS = torch.tensor([[1, 5, 7, 9, 11, 40, 3], [2, 8, 100, 6, 4, 12, 300]])


def four_layer_teacher(path, tied: bool) -> str:
    return save_tiny_teacher(path, num_hidden_layers=4, tie_word_embeddings=tied)


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("tied", [True, False])
def test_disk_offloaded_teacher_matches_the_in_memory_one(tmp_path, capsys, tied):
    folder = four_layer_teacher(tmp_path / "t", tied)
    full, _, _ = load_teacher(folder, CPU, torch.float32)
    size = os.path.getsize(Path(folder) / "model.safetensors")
    off, _, _ = load_teacher(folder, CPU, torch.float32, max_memory=str(int(size * 0.6)),
                             offload_dir=str(tmp_path / "offload"))
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("teacher placement") and "disk" in line and "cpu" in line
    where = placement(off)
    assert where["disk"]["layers"] >= 1 and where["cpu"]["layers"] >= 1
    assert sum(p["layers"] for p in where.values()) == 4
    torch.testing.assert_close(logits(off), logits(full), atol=1e-6, rtol=0)
    assert is_dispatched(off) and not is_dispatched(full)
    assert not off.training and not any(p.requires_grad for p in off.parameters())
    # An untied head on disk is on the meta device outside forward; a tied one stays with the embedding.
    assert off.get_output_embeddings().weight.device.type == ("cpu" if tied else "meta")


def test_a_teacher_that_fits_stays_in_memory(teacher_dir, tmp_path, capsys):
    model, _, _ = load_teacher(teacher_dir, CPU, torch.float32, max_memory="1GB", offload_dir=str(tmp_path / "o"))
    line = capsys.readouterr().out
    assert "teacher placement" in line and "disk" not in line and "cpu 2 layers" in line
    assert not is_dispatched(model)
    assert model.get_output_embeddings().weight.device == CPU


def test_pickled_teacher_offloads_into_offload_dir(tmp_path):
    folder = four_layer_teacher(tmp_path / "t", tied=False)
    full, _, _ = load_teacher(folder, CPU, torch.float32)
    torch.save(full.state_dict(), Path(folder) / "pytorch_model.bin")
    (Path(folder) / "model.safetensors").unlink()
    off, _, _ = load_teacher(folder, CPU, torch.float32, max_memory="130KB", offload_dir=str(tmp_path / "off"),
                             allow_pickle=True)
    assert is_dispatched(off) and any((tmp_path / "off").iterdir())
    torch.testing.assert_close(logits(off), logits(full), atol=1e-6, rtol=0)


def test_offload_needs_offload_dir(teacher_dir):
    with pytest.raises(ConfigError, match="teacher.offload_dir"):
        load_teacher(teacher_dir, CPU, torch.float32, max_memory="100KB")


@pytest.mark.parametrize("blocker", ["file", "under_a_file"])
def test_unwritable_offload_dir_is_refused(teacher_dir, tmp_path, blocker):
    (tmp_path / "file").write_text("in the way")
    target = tmp_path / "file" if blocker == "file" else tmp_path / "file" / "sub"
    with pytest.raises(ModelError, match=rf"teacher.offload_dir={target}.*cannot be written.*writable folder"):
        load_teacher(teacher_dir, CPU, torch.float32, max_memory="100KB", offload_dir=str(target))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any mode")
def test_read_only_offload_dir_is_refused(teacher_dir, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ModelError, match="cannot be written"):
            load_teacher(teacher_dir, CPU, torch.float32, max_memory="100KB", offload_dir=str(ro))
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("text, expected", [("2GB", 2 * 10**9), ("500MB", 5 * 10**8), ("1.5GiB", 3 * 2**29),
                                            ("130000", 130000), ("64 kib", 65536)])
def test_memory_sizes(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["lots", "2 gigs", "-1GB", "0"])
def test_bad_memory_size(teacher_dir, tmp_path, text):
    with pytest.raises(ConfigError, match="teacher.max_memory=.*2GB"):
        load_teacher(teacher_dir, CPU, torch.float32, max_memory=text, offload_dir=str(tmp_path))


def test_offload_and_quantisation_are_not_combined(teacher_dir, tmp_path):
    with pytest.raises(ConfigError, match="teacher.max_memory with teacher.load_in=8bit"):
        load_teacher(teacher_dir, CPU, torch.float32, load_in="8bit", max_memory="1GB", offload_dir=str(tmp_path))


def test_a_student_initialised_from_an_offloaded_teacher_equals_one_from_memory(tmp_path, capsys):
    """Layer choice, layer copies and embeddings read an offloaded teacher's weights as they are on disk."""
    import json

    from safetensors.torch import load_file

    from kdistill.config.schema import load_config
    from kdistill.run.distill import distill

    folder = four_layer_teacher(tmp_path / "t", tied=False)
    size = os.path.getsize(Path(folder) / "model.safetensors")
    fast = ["train.seq_len=32", "train.batch_size=4", "train.threads=1", "data.generate.num_samples=8",
            "data.generate.max_new_tokens=16", "student.num_layers=2", "eval.max_new_tokens=2",
            "eval.measure_speed=false", "eval.prompts=[Once]", "train.max_steps=1"]
    runs = {}
    for name, extra in {"memory": [], "disk": [f"teacher.max_memory={int(size * 0.6)}",
                                                    f"teacher.offload_dir={tmp_path / 'off'}"]}.items():
        distill(load_config(None, [f"teacher.model={folder}", f"output_dir={tmp_path / name}", *fast, *extra]))
        runs[name] = load_file(str(tmp_path / name / "checkpoints" / "step-000001" / "model.safetensors"))
        runs[name + "_init"] = json.loads((tmp_path / name / "eval.json").read_text())["student_init"]
    placed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("teacher placement")]
    assert placed and "disk" in placed[0]  # some teacher layers really were on disk
    assert runs["disk_init"]["layers"] == runs["memory_init"]["layers"]
    for k in runs["memory"]:
        torch.testing.assert_close(runs["disk"][k], runs["memory"][k], rtol=1e-5, atol=1e-6)
