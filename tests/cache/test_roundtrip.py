"""Write a cache with the tiny teacher, read it back: tokens exact, top-k ids exact, values within the
quantisation error; the manifest says what was written; `--inspect` prints it."""
import json

import numpy as np
import torch

from kdistill.cache.reader import open_cache
from kdistill.commands.cli import main as cli_main
from kdistill.data.batches import collate
from kdistill.models.teacher import load_teacher
from kdistill.run.cache import write_cache


def exact_topk(teacher_dir, examples, k):
    teacher, _, _ = load_teacher(teacher_dir, torch.device("cpu"), torch.float32)
    batch = collate(examples, 0)
    with torch.no_grad():
        lp = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
    values, ids = lp[batch["mask"]].double().topk(k, -1)
    return ids.numpy(), values.exp().numpy()


def test_topk_round_trip_within_the_quantisation_error(make_cfg, teacher_dir, tmp_path):
    cfg = make_cfg(tmp_path / "c", "cache.value_bits=6")
    manifest = write_cache(cfg)
    cache = open_cache(tmp_path / "c")
    assert len(manifest["shards"]) > 1 and manifest["complete"]
    assert manifest["signal"] == {"mode": "topk", "k": 12, "value_bits": 6, "temperature": 1.0, "id_bits": 9}
    assert manifest["vocab_size"] == 320 and manifest["seq_len"] == 32
    ids, probs = exact_topk(teacher_dir, cache.examples, 12)
    got_ids = np.concatenate([e["signal_ids"] for e in cache.examples])
    got = np.exp(np.concatenate([e["signal_logprobs"] for e in cache.examples]).astype(np.float64))
    order = np.argsort(ids, 1)
    assert (got_ids == np.take_along_axis(ids, order, 1)).all()
    exact = np.take_along_axis(probs, order, 1)
    step = 2.0 ** -6
    # each bucket's sqrt(p) is rounded to the step; normalising the K + 1 buckets moves it a little more
    assert np.abs(np.sqrt(got) - np.sqrt(exact)).max() <= step
    rest_exact, rest_got = 1 - exact.sum(1), 1 - got.sum(1)
    assert np.abs(np.sqrt(np.clip(rest_got, 0, 1)) - np.sqrt(np.clip(rest_exact, 0, 1))).max() <= step
    kl = (exact * np.log(exact / got)).sum(1) + rest_exact * np.log(rest_exact / rest_got)
    assert abs(kl.mean() - manifest["stats"]["kl_stored"]) < 1e-4  # the manifest states the measured error
    assert manifest["stats"]["bytes_per_token"] == sum(s["bytes"] for s in manifest["shards"]) / len(got)


def test_sampled_round_trip(make_cfg, tmp_path):
    cfg = make_cfg(tmp_path / "s", "cache.mode=sampled", "cache.samples=16")
    manifest = write_cache(cfg)
    cache = open_cache(tmp_path / "s")
    assert manifest["signal"]["mode"] == "sampled" and "k" not in manifest["signal"]
    for e in cache.examples:
        p = np.exp(e["signal_logprobs"].astype(np.float64))
        assert np.allclose(p.sum(1), 1) and np.allclose(p * 16, np.round(p * 16), atol=1e-4)  # counts / 16
        real = np.isfinite(e["signal_logprobs"])
        assert all(len(set(row[m])) == m.sum() for row, m in zip(e["signal_ids"], real))  # distinct ids
    batch = cache.collate_fn(2)(cache.examples[:3])
    assert batch["signal"].ids.shape[:2] == batch["mask"].shape


def test_cli_writes_and_inspects(make_cfg, teacher_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    args = [f"teacher.model={teacher_dir}", f"cache.out={out}", "train.seq_len=32", "data.generate.num_samples=16",
            "data.generate.max_new_tokens=24", "cache.k=12", "train.threads=1"]
    assert cli_main(["cache", *args]) == 0
    assert "bytes/token" in capsys.readouterr().out
    assert cli_main(["cache", "--inspect", str(out)]) == 0
    text = capsys.readouterr().out
    for words in ("top-k, k=12", "bytes/token", "captured probability mass", "KL(teacher ‖ stored)", "9-bit ids"):
        assert words in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest) >= {"format", "format_version", "teacher", "tokenizer", "vocab_size", "data", "signal",
                             "seq_len", "shards", "complete"}
    assert all(len(s["sha256"]) == 64 for s in manifest["shards"])
    assert len(manifest["teacher"]["weights_sha256"]) == 64 and manifest["data"]["source"]["generated"]
