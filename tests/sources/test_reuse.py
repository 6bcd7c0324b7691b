"""teacher.reuse_topk (sources/reuse.py): a row's top-K signal is the live teacher's, kept at the first visit
and read back at the next without running the teacher; with K = V a run is the plain run, with K < V it is
the run from a `kdistill cache` of that K; what it cannot do is refused before anything loads."""
import json

import pytest
import torch
from helpers import save_tiny_teacher, tiny_llama, tiny_tokenizer

from kdistill.base.errors import ConfigError
from kdistill.config.schema import load_config
from kdistill.data import batches as batching
from kdistill.losses import SparseSignal
from kdistill.run.cache import write_cache
from kdistill.run.distill import distill
from kdistill.sources.ema import EmaSource
from kdistill.sources.model import ModelSource
from kdistill.sources.reuse import ReuseSource, top_k

FAST = ["train.seq_len=32", "train.batch_size=4", "train.threads=1", "data.generate.num_samples=16",
        "data.generate.max_new_tokens=24", "student.num_layers=1", "eval.max_new_tokens=2",
        "eval.measure_speed=false", "eval.prompts=[Once]", "train.max_steps=6", "train.eval_every=3",
        "student.layer_selection=first_last", "train.lr=0.01", "train.warmup_steps=0", "student.init=random"]


class Counting(ModelSource):
    calls = 0

    def signal(self, batch, vocab_size):
        Counting.calls += 1
        return super().signal(batch, vocab_size)


def _examples(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"ids": torch.randint(5, 300, (n,), generator=g).tolist(), "mask": [1] * n} for n in lengths]


@pytest.fixture
def source():
    tok = tiny_tokenizer()
    Counting.calls = 0
    return Counting(tiny_llama(len(tok)), tok, "")


def test_a_kept_row_is_read_back_without_the_teacher(source):
    reuse = ReuseSource(source, k=7, max_mb=10)
    a, b, c = _examples([9, 13, 6])
    first = reuse.signal(batching.collate([a, b], 0), 320)
    live = SparseSignal.from_logits(source.model(**{k: batching.collate([a, b], 0)[k] for k in
                                                    ("input_ids", "attention_mask")}).logits, 7)
    torch.testing.assert_close(first.logprobs, live.logprobs, rtol=1e-5, atol=1e-5)
    assert Counting.calls == 1 and reuse.stats()["rows"] == 2
    # the same rows, the other way round and padded to a longer row's length: no teacher forward
    longer = batching.collate([b, a, b, _examples([20], seed=9)[0]], 0)
    again_batch = {k: v[:3] for k, v in longer.items()}  # padded to 19 positions
    again = reuse.signal(again_batch, 320)
    assert Counting.calls == 1 and again.ids.shape[:2] == again_batch["input_ids"].shape
    for row, (i, n) in zip((0, 1, 2), ((1, 12), (0, 8), (1, 12))):
        torch.testing.assert_close(again.logprobs[row, :n], first.logprobs[i, :n])
        assert torch.equal(again.ids[row, :n], first.ids[i, :n])
    assert torch.isfinite(again.logprobs).all()  # padded positions hold a finite placeholder
    reuse.signal(batching.collate([a, c], 0), 320)  # one new row: the teacher runs for the batch
    assert Counting.calls == 2 and reuse.stats() == {"hits": 4, "misses": 3, "rows": 3, "mb": pytest.approx(
        (8 + 12 + 5) * 7 * 8 / 2 ** 20, abs=0.01)}


def test_past_its_megabytes_a_row_is_scored_at_every_visit(source):
    a, b = _examples([9, 13])
    reuse = ReuseSource(source, k=7, max_mb=(8 * 7 * 8 + 1) / 2 ** 20)  # room for a's 8 positions only
    for _ in range(2):
        reuse.signal(batching.collate([a], 0), 320)
        reuse.signal(batching.collate([b], 0), 320)
    assert reuse.stats()["rows"] == 1 and Counting.calls == 3  # a once, b at both visits


def test_packed_rows_are_known_by_their_records_too(source):
    reuse = ReuseSource(source, k=5, max_mb=10)
    ids = _examples([12])[0]["ids"]
    one = {"ids": ids, "mask": [1] * 12, "segments": [0] * 12}
    two = {"ids": ids, "mask": [1] * 12, "segments": [0] * 6 + [1] * 6}  # the same tokens as two records
    reuse.signal(batching.collate([one], 0), 320)
    reuse.signal(batching.collate([two], 0), 320)
    assert Counting.calls == 2 and reuse.stats()["rows"] == 2


def test_top_k_of_a_sparse_signal_keeps_the_most_likely_slots():
    signal = SparseSignal(ids=torch.tensor([[[4, 9, 2]]]), logprobs=torch.tensor([[[-2.0, -0.5, -1.0]]]))
    cut = top_k(signal, 2)
    assert cut.ids.tolist() == [[[9, 2]]] and cut.logprobs.tolist() == [[[-0.5, -1.0]]]
    assert top_k(signal, 3) is signal


def test_a_source_whose_signal_changes_is_refused():
    with pytest.raises(ValueError, match="never changes"):
        ReuseSource(EmaSource("ema", update_rate=0.5, every=1), k=5, max_mb=10)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return save_tiny_teacher(tmp_path_factory.mktemp("teacher") / "t", seed=0)


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _run(teacher_dir, out, *extra):
    return distill(load_config(None, [f"teacher.model={teacher_dir}", f"output_dir={out}", *FAST, *extra]))


def test_with_every_id_kept_a_run_is_the_plain_run(teacher_dir, tmp_path):
    terms = "loss.terms=[{kind: forward_kl, missing_mass: residual}, {kind: ce, weight: 0.1}]"
    _run(teacher_dir, tmp_path / "plain", terms)
    _run(teacher_dir, tmp_path / "kept", terms, "teacher.reuse_topk=320")  # K = V: the whole distribution
    plain, kept = _rows(tmp_path / "plain"), _rows(tmp_path / "kept")
    assert len(plain) == len(kept) == 7 and plain[1]["loss"] > 0.1  # a random student: a loss far from 0
    for a, b in zip(plain[1:], kept[1:]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3) and b["forward_kl"] == pytest.approx(a["forward_kl"],
                                                                                                    rel=1e-3)
    assert kept[-1]["eval_kl"] == pytest.approx(plain[-1]["eval_kl"], rel=1e-3)  # held out: the live teacher


def test_with_k_ids_kept_a_run_is_the_run_from_a_cache_of_k(teacher_dir, tmp_path, monkeypatch):
    terms = "loss.terms=[{kind: forward_kl, missing_mass: residual}, {kind: ce, weight: 0.1}]"
    write_cache(load_config(None, [f"teacher.model={teacher_dir}", f"cache.out={tmp_path / 'c'}", *FAST,
                                   "cache.k=8", "cache.value_bits=16"]))
    cached = _run(teacher_dir, tmp_path / "cached", terms, f"teacher.cache={tmp_path / 'c'}")
    visits, rows = [], []
    real = ReuseSource.signal

    def count(self, batch, vocab_size):
        out = real(self, batch, vocab_size)
        visits.append(dict(self.stats()))
        rows.append(batch["input_ids"].shape[0])
        return out

    monkeypatch.setattr(ReuseSource, "signal", count)
    _run(teacher_dir, tmp_path / "kept", terms, "teacher.reuse_topk=8", "data.pack=false")  # a cache run reads
    # one record a row, so this run does too: both see the same batches
    a, b = _rows(tmp_path / "cached"), _rows(tmp_path / "kept")
    for x, y in zip(a[1:], b[1:]):  # 16-bit cached values against float32 kept ones
        assert y["loss"] == pytest.approx(x["loss"], rel=2e-3) and y["forward_kl"] == pytest.approx(x["forward_kl"],
                                                                                                    rel=2e-3)
    assert b[-1]["eval_kl"] == pytest.approx(cached["heldout"]["kl"], rel=1e-2)
    # each training record is scored by the teacher at its first visit and kept; every later visit is read back
    records = json.loads((tmp_path / "kept" / "data_report.json").read_text())["heldout_split"]["train_examples"]
    last = visits[-1]
    assert last["rows"] == records >= 12 and last["hits"] + last["misses"] == sum(rows) and last["hits"] > 0
    assert records <= last["misses"] < records + 4  # a first visit, or another in the same batch (an epoch's end)


@pytest.mark.parametrize("extra, named", [
    ("teacher.cache=/some/cache", "teacher.cache"),
    ("rollout.lmbda=0.5", "rollout.source=student"),
    ("loss.terms=[{kind: forward_kl}, {kind: hidden_mse, weight: 1.0}]", "hidden_mse"),
])
def test_what_a_kept_signal_cannot_serve_is_refused_before_loading(tmp_path, extra, named):
    from kdistill.config.checks import check_supported

    overrides = ["teacher.reuse_topk=8", extra] + (["rollout.source=student"] if "rollout" in extra else [])
    with pytest.raises(ConfigError, match=f"teacher.reuse_topk=8: .*{named}"):
        check_supported(load_config(None, [f"output_dir={tmp_path}", *overrides]))
