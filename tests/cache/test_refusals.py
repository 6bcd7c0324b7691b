"""Every way a cache can be wrong gets a clear error before step 0, never a silent wrong answer: a truncated
or corrupted shard, an unknown format version, an unfinished cache, another tokenizer, other data."""
import json

import pytest
from helpers import save_tiny_teacher

from kdistill.cache.manifest import CacheError, CacheMismatch
from kdistill.cache.reader import open_cache
from kdistill.config.schema import load_config
from kdistill.run.cache import write_cache
from kdistill.run.distill import distill

from .conftest import FAST


@pytest.fixture(scope="module")
def written(teacher_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("c") / "cache"
    write_cache(load_config(None, [f"teacher.model={teacher_dir}", f"cache.out={out}", *FAST]))
    return out


@pytest.fixture
def cache(written, tmp_path):
    import shutil

    return shutil.copytree(written, tmp_path / "cache")


def _manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def _edit_manifest(folder, change):
    m = _manifest(folder)
    change(m)
    (folder / "manifest.json").write_text(json.dumps(m))


def test_truncated_shard(cache):
    shard = cache / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-7])
    with pytest.raises(CacheError, match=r"shard-00001.safetensors: \d+ bytes, the manifest says \d+ \(truncated"):
        open_cache(cache)


def test_corrupted_shard(cache):
    shard = cache / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x10
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="shard-00000.safetensors: checksum mismatch"):
        open_cache(cache)


def test_missing_shard(cache):
    (cache / "shard-00002.safetensors").unlink()
    with pytest.raises(CacheError, match="shard-00002.safetensors: shard missing"):
        open_cache(cache)


def test_garbage_with_a_matching_checksum_is_still_refused(cache):
    import hashlib

    shard = cache / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3:] = b"\xff\xff\xff"  # the end of the last stream: decodes to other ids or fails
    shard.write_bytes(bytes(data))
    _edit_manifest(cache, lambda m: m["shards"][0].update(sha256=hashlib.sha256(bytes(data)).hexdigest()))
    with pytest.raises(CacheError, match="shard-00000.safetensors: cannot decode|data fingerprint"):
        open_cache(cache)


def test_unknown_format_version(cache):
    _edit_manifest(cache, lambda m: m.update(format_version=99))
    with pytest.raises(CacheError, match="format version 99.*reads version 1"):
        open_cache(cache)


def test_unfinished_cache_and_not_a_cache(cache, tmp_path):
    _edit_manifest(cache, lambda m: m.update(complete=False))
    with pytest.raises(CacheError, match="incomplete.*Run the same `kdistill cache` command again"):
        open_cache(cache)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CacheError, match="not a teacher cache"):
        open_cache(tmp_path / "empty")
    (cache / "manifest.json").write_text("{not json")
    with pytest.raises(CacheError, match="not valid JSON"):
        open_cache(cache)


def _run(teacher, cache, out, *extra):
    return load_config(None, [f"teacher.model={teacher}", f"teacher.cache={cache}", f"output_dir={out}",
                              "train.max_steps=1", *FAST, *extra])


def test_a_cache_from_another_tokenizer_is_refused(written, tmp_path):
    from helpers import tiny_tokenizer
    from transformers import AutoTokenizer

    other = tmp_path / "other"
    save_tiny_teacher(other, seed=1)
    tiny_tokenizer(300).save_pretrained(other)  # same architecture, another vocabulary
    assert len(AutoTokenizer.from_pretrained(other)) != 320
    with pytest.raises(CacheMismatch, match="another tokenizer than teacher cache"):
        distill(_run(other, written, tmp_path / "run"))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before step 0
    with pytest.raises(CacheMismatch, match="another tokenizer than teacher cache"):  # whatever student.init is
        distill(_run(other, written, tmp_path / "run2", "student.init=random"))
    assert not (tmp_path / "run2" / "metrics.jsonl").exists()


def test_other_seq_len_or_data_is_refused(teacher_dir, written, tmp_path):
    with pytest.raises(CacheMismatch, match="seq_len 32.*train.seq_len=64"):
        distill(_run(teacher_dir, written, tmp_path / "a", "train.seq_len=64"))
    with pytest.raises(CacheMismatch, match="other data.*num_samples"):
        distill(_run(teacher_dir, written, tmp_path / "b", "data.generate.num_samples=8"))
    notes = tmp_path / "notes.txt"
    notes.write_text("Once upon a time there was a fox.\n" * 20)
    with pytest.raises(CacheMismatch, match="other data.*path"):
        distill(_run(teacher_dir, written, tmp_path / "c", f"data.path={notes}"))


def test_a_changed_data_file_is_refused(teacher_dir, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("Once upon a time there was a little fox who lived in the forest.\n" * 12)
    cache = tmp_path / "cache"
    write_cache(load_config(None, [f"teacher.model={teacher_dir}", f"cache.out={cache}", f"data.path={notes}", *FAST]))
    notes.write_text("The king said that the castle would open its gates at dawn.\n" * 12)
    with pytest.raises(CacheMismatch, match="notes.txt has changed since"):
        distill(_run(teacher_dir, cache, tmp_path / "run", f"data.path={notes}"))


@pytest.mark.parametrize("text, says", [
    ("[1, 2]", "a JSON list, not the object a kdistill teacher cache manifest is"),
    ('"manifest"', "a JSON str, not the object"),
])
def test_a_manifest_that_is_not_an_object_is_named(cache, text, says):
    (cache / "manifest.json").write_text(text)
    with pytest.raises(CacheError, match=rf"{cache / 'manifest.json'}: {says}.*kdistill cache --overwrite"):
        open_cache(cache)


@pytest.mark.parametrize("change, says", [
    (lambda m: m.pop("signal"), "no 'signal' key"),
    (lambda m: m.update(shards={"0": "x"}), "'shards' is .*, not list"),
    (lambda m: m["teacher"].pop("weights_sha256"), "'teacher' has no 'weights_sha256'"),
    (lambda m: m["shards"][1].pop("sha256"), r"shards\[1\] has no 'sha256'"),
    (lambda m: m.update(vocab_size="320"), "'vocab_size' is '320', not int"),
])
def test_a_manifest_missing_keys_is_named(cache, change, says):
    _edit_manifest(cache, change)
    with pytest.raises(CacheError, match=rf"{cache / 'manifest.json'}: {says}; the manifest is damaged: rewrite"):
        open_cache(cache)


def test_a_damaged_teacher_config_is_named(cache):
    (cache / "teacher_config.json").write_text("[]")
    with pytest.raises(CacheError, match=r"teacher_config.json: cannot read the teacher's config \(TypeError"):
        open_cache(cache).teacher_config()
