"""Checkpoints prove themselves: checksums.json written with them, a damaged newest one is skipped with a
reason, leftovers of a killed write are removed, and load errors say what does not fit."""
import json

import pytest
import torch
from helpers import tiny_llama, tiny_tokenizer
from safetensors.torch import load_file

from kdistill.base.errors import KdistillError
from kdistill.train import checkpoint

VOCAB = 320


def _trained(seed=0, **overrides):
    """A tiny student with a real AdamW + LambdaLR after one step (so the optimizer has state)."""
    model = tiny_llama(VOCAB, seed=seed, **overrides).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
    model(input_ids=torch.arange(8).view(1, 8), labels=torch.arange(8).view(1, 8)).loss.backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler


def _save(out, step, keep=3, parts=None):
    model, optimizer, scheduler = parts or _trained(seed=step)
    return checkpoint.save_checkpoint(out, step, model, tiny_tokenizer(), optimizer, scheduler,
                                      {"tokens": step * 10, "data": {"pos": step}}, keep)


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    _save(out, 2)
    _save(out, 4)
    return out


@pytest.fixture
def run(two_checkpoints, tmp_path):
    import shutil

    shutil.copytree(two_checkpoints, tmp_path / "run")
    return tmp_path / "run"


def test_checksums_json_lists_every_file_with_sha256_and_size(run):
    import hashlib

    folder = run / "checkpoints" / "step-000004"
    table = json.loads((folder / "checksums.json").read_text())["files"]
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert sorted(table) == [f for f in files if f != "checksums.json"]
    assert {"model.safetensors", "optimizer.safetensors", "rng.safetensors", "trainer_state.json"} <= set(table)
    for name, want in table.items():
        data = (folder / name).read_bytes()
        assert want == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    assert checkpoint.resume_point(run) == (folder, [])


def _truncate(f):
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])


def _flip_a_byte(f):
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF  # in the tensor data: the header still parses
    f.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, says", [(_truncate, "is truncated"), (_flip_a_byte, "is corrupted")])
def test_a_damaged_newest_checkpoint_is_skipped_with_the_reason(run, damage, says):
    model_file = run / "checkpoints" / "step-000004" / "model.safetensors"
    size = model_file.stat().st_size
    damage(model_file)
    assert (model_file.stat().st_size == size) == (says == "is corrupted")
    found, notes = checkpoint.resume_point(run)
    assert found == run / "checkpoints" / "step-000002"
    assert len(notes) == 1 and notes[0].startswith(f"checkpoints/step-000004: model.safetensors {says}")
    assert "sha256 mismatch" in notes[0] and notes[0].endswith("; using step-000002")


def test_a_checkpoint_without_checksums_must_parse(run):
    for step in ("step-000002", "step-000004"):
        (run / "checkpoints" / step / "checksums.json").unlink()
    assert checkpoint.resume_point(run)[0].name == "step-000004"
    _truncate(run / "checkpoints" / "step-000004" / "optimizer.safetensors")
    found, notes = checkpoint.resume_point(run)
    assert found.name == "step-000002"
    assert notes[0].startswith("checkpoints/step-000004: optimizer.safetensors does not parse")


def test_no_checkpoint_verifies(run):
    (run / "checkpoints" / "step-000004" / "rng.safetensors").unlink()
    _flip_a_byte(run / "checkpoints" / "step-000002" / "optimizer.safetensors")
    found, notes = checkpoint.resume_point(run)
    assert found is None
    assert notes == ["checkpoints/step-000004: rng.safetensors is missing; no earlier checkpoint verifies",
                     notes[1]] and notes[1].startswith("checkpoints/step-000002: optimizer.safetensors is corrupted")
    assert checkpoint.resume_point(run / "nothing") == (None, [])


def test_rotation_keeps_the_newer_folders_of_an_abandoned_attempt(run):
    _save(run, 3, keep=1)  # resumed from step 2 because step 4 was damaged
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000003", "step-000004"]
    _save(run, 4, keep=1)  # replaces the old step 4
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000004"]
    assert checkpoint.resume_point(run)[0].name == "step-000004"


def test_clean_partial_removes_leftovers_of_killed_writes(run):
    ckpts = run / "checkpoints"
    (ckpts / ".step-000006.a1b2c3d4.tmp").mkdir()
    (ckpts / ".step-000006.a1b2c3d4.tmp" / "model.safetensors").write_bytes(b"half")
    (run / ".student.x_y9z8w7.tmp").mkdir()
    (run / ".adapter.old").mkdir()
    (run / "adapter").mkdir()
    (run / ".metrics.jsonl.qwertyui.tmp").write_text("{")
    (run / ".student.old").mkdir()  # killed between the two renames: student/ is gone, .old is complete
    (run / ".student.old" / "config.json").write_text("{}")
    (run / ".notes.old").write_text("a user's file")
    removed = checkpoint.clean_partial(run)
    assert sorted(p.name for p in removed) == [".adapter.old", ".metrics.jsonl.qwertyui.tmp",
                                               ".step-000006.a1b2c3d4.tmp", ".student.x_y9z8w7.tmp"]
    assert sorted(p.name for p in run.iterdir()) == [".notes.old", "adapter", "checkpoints", "student"]
    assert (run / "student" / "config.json").read_text() == "{}"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000002", "step-000004"]
    assert checkpoint.clean_partial(run) == []


def test_load_checkpoint_restores_what_was_saved(run):
    saved = load_file(str(run / "checkpoints" / "step-000004" / "model.safetensors"))
    model, optimizer, scheduler = _trained(seed=99)
    state = checkpoint.load_checkpoint(run / "checkpoints" / "step-000004", model, optimizer, scheduler)
    assert state["step"] == 4 and state["tokens"] == 40 and state["data"] == {"pos": 4}
    for k, v in model.state_dict().items():
        if k in saved:
            assert torch.equal(v, saved[k]), k


def test_load_errors_say_what_does_not_fit_and_never_to_delete(run):
    folder = run / "checkpoints" / "step-000004"
    wider = _trained(intermediate_size=48)
    with pytest.raises(KdistillError, match=r"other shapes than this config's \(model\.layers\.0\.mlp\..*"
                                            r"\[32, 64\] in the checkpoint, \[32, 48\] in this config's student\); resume with the config") as e:
        checkpoint.load_checkpoint(folder, *wider)
    deeper = _trained(num_hidden_layers=3)
    with pytest.raises(KdistillError, match=r"model\.layers\.2\..* absent from the checkpoint") as e2:
        checkpoint.load_checkpoint(folder, *deeper)
    model, _, scheduler = _trained()
    few = torch.optim.AdamW(list(model.parameters())[:3], lr=1e-3)
    with pytest.raises(KdistillError, match="optimizer state is for other trainable parameters") as e3:
        checkpoint.load_checkpoint(folder, model, few, scheduler)
    (folder / "rng.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(KdistillError, match="cannot be read.*run --resume again") as e4:
        checkpoint.load_checkpoint(folder, *_trained())
    for err in (e, e2, e3, e4):
        assert "delete" not in str(err.value)


@pytest.mark.parametrize("text, says", [('{"step": 4, "optim', "not valid JSON"),
                                        ("[4]", "a JSON list, not an object")])
def test_a_damaged_state_file_is_named(run, text, says):
    folder = run / "checkpoints" / "step-000004"
    (folder / "checksums.json").unlink()  # as a checkpoint of a kdistill before checksums
    (folder / "trainer_state.json").write_text(text)
    found, notes = checkpoint.resume_point(run)
    assert found.name == "step-000002"
    assert notes[0].startswith(f"checkpoints/step-000004: trainer_state.json is {says}")
    with pytest.raises(checkpoint.CheckpointError, match=rf"{folder / 'trainer_state.json'}: {says}.*run --resume"):
        checkpoint.read_state(folder)
    with pytest.raises(KdistillError, match=rf"{folder / 'trainer_state.json'}: {says}"):
        checkpoint.load_checkpoint(folder, *_trained())


def test_a_state_value_of_another_type_is_named(run):
    folder = run / "checkpoints" / "step-000004"
    state = json.loads((folder / "trainer_state.json").read_text())
    state["optimizer"] = ["not", "a", "dict"]
    (folder / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(checkpoint.CheckpointError, match=rf"{folder / 'trainer_state.json'}: a value of the wrong"):
        checkpoint.load_checkpoint(folder, *_trained())


def test_clean_partial_leaves_what_is_not_a_runs_own(run):
    (run / ".notes.txt.abcdefgh.tmp").write_text("the user's")
    (run / ".config.yaml.abcdefgh.tmp").write_text("a killed write of the run's config.yaml")
    assert [p.name for p in checkpoint.clean_partial(run)] == [".config.yaml.abcdefgh.tmp"]
    assert (run / ".notes.txt.abcdefgh.tmp").read_text() == "the user's"
