"""`kdistill distill` with teacher.cache: the teacher never runs in the loop, the loss is the online loss
when the cache holds the whole distribution, and a run without any teacher still trains and reports."""
import json

import pytest

import kdistill.run.distill as distill_module
from kdistill.config.schema import load_config
from kdistill.run.cache import write_cache
from kdistill.run.distill import distill
from kdistill.sources import model as model_source
from kdistill.train import loop

from .conftest import FAST


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _cfg(teacher_dir, out, *extra):
    return load_config(None, [f"teacher.model={teacher_dir}", f"output_dir={out}", *FAST, "train.max_steps=2",
                              "train.eval_every=1", "eval.prompts=[Once upon]", "eval.measure_speed=false", *extra])


def test_cache_with_the_whole_distribution_gives_the_online_loss(teacher_dir, tmp_path, monkeypatch):
    write_cache(load_config(None, [f"teacher.model={teacher_dir}", f"cache.out={tmp_path / 'c'}", *FAST,
                                   "cache.k=320", "cache.value_bits=16"]))  # k = V: the cache is the teacher
    terms = "loss.terms=[{kind: forward_kl, missing_mass: residual}, {kind: ce, weight: 0.1}]"
    distill(_cfg(teacher_dir, tmp_path / "online", terms, "data.pack=false"))  # a cache run reads one record a
    # row (docs/data.md), so the online run does too: both see the same batches

    training, real_signal, run_training = [], model_source.ModelSource.signal, loop.run_training

    def no_teacher_in_the_loop(*args, **kw):  # once before step 0 (held-out reference), never after
        assert not training, "the teacher ran in the training loop of a cache run"
        return real_signal(*args, **kw)

    def mark(*args, **kw):
        training.append(True)
        return run_training(*args, **kw)

    monkeypatch.setattr(model_source.ModelSource, "signal", no_teacher_in_the_loop)
    monkeypatch.setattr(distill_module, "run_training", mark)
    result = distill(_cfg(teacher_dir, tmp_path / "cached", terms, f"teacher.cache={tmp_path / 'c'}"))
    online, cached = _rows(tmp_path / "online"), _rows(tmp_path / "cached")
    for a, b in zip(online[1:], cached[1:]):
        # the KL here is ~1e-5 nats (the student starts as the tiny teacher's copy): relative 1e-3 alone would
        # ask for 1e-8 nats, finer than 16-bit cached values carry on every CPU; 2e-7 nats is still tight
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3) and b["forward_kl"] == pytest.approx(a["forward_kl"],
                                                                                                    rel=1e-3, abs=2e-7)
        assert b["eval_cache_kl"] == pytest.approx(a["eval_kl"], rel=1e-2, abs=1e-4)  # vs the cached distribution
        assert b["eval_kl"] == pytest.approx(a["eval_kl"], rel=1e-2, abs=1e-4)  # vs the real teacher, too
    assert result["teacher_source"]["kind"] == "cache" and "heldout_cache" in result
    assert result["heldout_cache_start"]["kl"] == pytest.approx(result["heldout_start"]["kl"], rel=1e-2)
    assert result["heldout"]["kl"] == pytest.approx(json.loads((tmp_path / "online" / "eval.json").read_text())
                                                    ["heldout"]["kl"], rel=1e-2)


@pytest.mark.parametrize("mode", ["topk", "sampled"])
def test_training_without_any_teacher(teacher_dir, tmp_path, mode):
    write_cache(load_config(None, [f"teacher.model={teacher_dir}", f"cache.out={tmp_path / 'c'}", *FAST,
                                   f"cache.mode={mode}"]))
    out = tmp_path / "run"
    result = distill(_cfg("/no/such/teacher", out, "student.init=random", f"teacher.cache={tmp_path / 'c'}"))
    rows = _rows(out)
    assert [r["step"] for r in rows] == [0, 1, 2] and all(r["eval_cache_kl"] >= 0 for r in rows)
    assert not any("eval_kl" in r for r in rows)  # no teacher: nothing claims to be measured against it
    assert "heldout" not in result and result["heldout_cache"]["kl"] >= 0
    assert (out / "student" / "config.json").is_file()
    with pytest.raises(Exception, match="does not exist.*student.init=random"):
        distill(_cfg("/no/such/teacher", tmp_path / "r2", f"teacher.cache={tmp_path / 'c'}"))
