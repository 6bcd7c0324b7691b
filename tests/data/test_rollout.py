"""Rollouts: prompts, left-padded KV-cache sampling, EOS masking, the token recount, the coin, state."""
import json
from types import SimpleNamespace

import pytest
import torch
from helpers import tiny_llama

from kdistill.config.schema import RolloutConfig
from kdistill.data import rollout
from kdistill.data.batches import BatchStream, collate

EOS, PAD, V = 2, 0, 40


class Scripted(torch.nn.Module):
    """A 'model' whose next token is script[i][n] for row i after n generated tokens (no KV cache)."""

    def __init__(self, script, prompt_len):
        super().__init__()
        self.script, self.prompt_len = script, prompt_len
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask, **_):
        n = input_ids.shape[1] - self.prompt_len
        logits = torch.full((input_ids.shape[0], input_ids.shape[1], V), -30.0)
        for i, row in enumerate(self.script):
            logits[i, -1, row[min(n, len(row) - 1)]] = 30.0
        return SimpleNamespace(logits=logits, past_key_values=None)


def _sample(model, prompts, max_new=6, seed=0, **kw):
    return rollout.sample(model, prompts, max_new, {EOS}, PAD, V, "cpu", torch.Generator().manual_seed(seed), **kw)


def test_everything_after_the_first_eos_is_masked_and_tokens_are_recounted():
    prompts = [[5, 6, 7], [8, 9]]
    model = Scripted([[11, 12, EOS, 13, 14, 15], [21, 22, 23, 24, 25, 26]], prompt_len=3)
    new, lps = _sample(model, prompts)
    assert new == [[11, 12, EOS], [21, 22, 23, 24, 25, 26]]
    records = [rollout.rollout_record(p, n, lp, {EOS}) for p, n, lp in zip(prompts, new, lps)]
    assert [r["generated"] for r in records] == [2, 6]
    batch = rollout.collate_records(records, PAD)
    assert set(batch) == {"input_ids", "attention_mask", "targets", "mask", "behaviour_logprobs"}
    assert batch["input_ids"][0].tolist() == [5, 6, 7, 11, 12, PAD, PAD]  # right-padded like collate
    assert batch["targets"][0, :4].tolist() == [6, 7, 11, 12]
    assert batch["mask"][0].tolist() == [False, False, True, True, False, False, False]  # not the EOS
    assert batch["mask"][1].tolist() == [False, True, True, True, True, True, True]
    assert int(batch["mask"].sum()) == 8
    b = batch["behaviour_logprobs"]
    assert torch.isnan(b[~batch["mask"]]).all() and (b[batch["mask"]].abs() < 1e-6).all()  # near-certain picks


def test_left_padded_kv_cache_sampling_matches_one_prompt_at_a_time_greedy():
    model = tiny_llama(V, seed=3)
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    new, _ = _sample(model, prompts, max_new=5, top_p=1e-6)  # top-p this small keeps only the best id
    for p, got in zip(prompts, new):
        ref = model.generate(torch.tensor([p]), max_new_tokens=5, do_sample=False, pad_token_id=PAD,
                             eos_token_id=EOS)[0, len(p):].tolist()
        if EOS in ref:
            ref = ref[:ref.index(EOS) + 1]
        assert got == ref


def test_generation_restores_train_mode_and_gradient_checkpointing():
    model = tiny_llama(V, seed=1)
    rollout.set_checkpointing(model, True)
    model.train()
    _sample(model, [[5, 6]], max_new=2)
    assert model.training and rollout.checkpointing(model)


def test_prompts_are_the_prompt_part_or_the_first_tokens_cut_from_the_left():
    batch = collate([{"ids": [1, 2, 3, 4, 5, 6], "mask": [False, False, False, True, True, True]},
                     {"ids": list(range(10, 20)), "mask": [True] * 10}], PAD)
    prompts, cut = rollout.batch_prompts(batch, prompt_tokens=4, max_prompt=8)
    assert prompts == [[1, 2, 3], [10, 11, 12, 13]] and cut == 0
    prompts, cut = rollout.batch_prompts(batch, prompt_tokens=4, max_prompt=2)
    assert prompts == [[2, 3], [12, 13]] and cut == 2


def test_the_coin_is_seeded_by_seed_and_step():
    coins = [rollout.is_rollout_step(7, s, 0.5) for s in range(2000)]
    assert coins == [rollout.is_rollout_step(7, s, 0.5) for s in range(2000)]
    assert 0.45 < sum(coins) / len(coins) < 0.55
    assert coins != [rollout.is_rollout_step(8, s, 0.5) for s in range(2000)]
    assert not any(rollout.is_rollout_step(7, s, 0.0) for s in range(100))
    assert all(rollout.is_rollout_step(7, s, 1.0) for s in range(100))


def _examples(n=12):
    return [{"ids": list(range(3 + i, 15 + i)), "mask": [True] * 12} for i in range(n)]


def _stream(writer, **settings):
    base = BatchStream(_examples(), 3, seed=1, pad_id=PAD)
    cfg = RolloutConfig(**{"source": "student", "lmbda": 1.0, "max_new_tokens": 4, "prompt_tokens": 3, **settings})
    return rollout.RolloutStream(base, cfg, seed=1, grad_accum=1, seq_len=16, writer=writer, eos_ids={EOS},
                                 pad_id=PAD, vocab_size=V, device="cpu")


def test_lmbda_zero_gives_the_data_batches_unchanged():
    plain = BatchStream(_examples(), 3, seed=1, pad_id=PAD)
    stream = _stream(tiny_llama(V), lmbda=0.0)
    for _ in range(6):
        a, b = plain.next(), stream.next()
        assert all(torch.equal(a[k], b[k]) for k in a) and set(a) == set(b)
        assert stream.last_info == {"rollout_tokens": 0, "rollout_staleness": None}


def test_buffer_reuse_records_staleness_and_state_resumes_exactly():
    model = tiny_llama(V, seed=2)
    a = _stream(model, buffer=2)
    first = a.next()
    assert a.last_info["rollout_staleness"] == 0 and a.last_info["rollout_tokens"] == int(first["mask"].sum()) > 0
    again = a.next()
    assert a.last_info["rollout_staleness"] == 1 and torch.equal(first["input_ids"], again["input_ids"])
    a.next()
    assert a.last_info["rollout_staleness"] == 0
    b = _stream(model, buffer=2)
    b.load_state(json.loads(json.dumps(a.state())))  # what a checkpoint holds
    for _ in range(3):
        x, y = a.next(), b.next()
        assert all(torch.equal(x[k], y[k]) for k in ("input_ids", "targets", "mask"))
        torch.testing.assert_close(x["behaviour_logprobs"], y["behaviour_logprobs"], equal_nan=True)
        assert a.last_info == b.last_info


def test_a_student_that_writes_only_eos_gives_a_zero_token_step(capsys):
    from helpers import tiny_tokenizer

    from kdistill.losses import build_objective
    from kdistill.sources.model import ModelSource
    from kdistill.train.step import StudentLoss, accumulate_gradients

    stream = _stream(Scripted([[EOS]] * 3, prompt_len=3))
    batch = stream.next()
    assert int(batch["mask"].sum()) == 0 and stream.last_info["rollout_tokens"] == 0
    assert "0 loss tokens" in capsys.readouterr().out
    student, teacher = tiny_llama(V, seed=4), tiny_llama(V, seed=5)
    source = ModelSource(teacher, tiny_tokenizer(), None)
    objective = build_objective([{"kind": "reverse_kl_pg", "gamma": 1.0}, {"kind": "jsd"}])
    row = accumulate_gradients(StudentLoss(student, objective), source, [batch], torch.device("cpu"), 0.0)
    assert row["tokens"] == 0 and row["loss"] == 0.0
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in student.parameters())


def test_teacher_mixing_records_the_mixture_logprob():
    lq, lp = torch.randn(2, V).log_softmax(-1), torch.randn(2, V).log_softmax(-1)
    mixed = rollout.sampling_logprobs(lq, 1.0, 1.0, lp, 0.2)
    torch.testing.assert_close(mixed.exp(), 0.8 * lq.exp() + 0.2 * lp.exp())
    nucleus = rollout.sampling_logprobs(lq, 1.0, 0.5)
    assert torch.isclose(nucleus.exp().sum(-1), torch.ones(2)).all()
    kept = nucleus.isfinite()
    assert (lq.exp().masked_fill(~kept, 0).sum(-1) >= 0.5).all()


@pytest.mark.parametrize("settings", [{"source": "nope"}, {"lmbda": 1.5}, {"top_p": 0.0}, {"buffer": 0},
                                      {"max_new_tokens": 32}, {"teacher_mix": 1.0}])
def test_bad_rollout_settings_are_refused(settings):
    from kdistill.base.errors import ConfigError
    from kdistill.config.schema import load_config

    overrides = ["rollout.source=student", "train.seq_len=32"] + [f"rollout.{k}={v}" for k, v in settings.items()]
    with pytest.raises(ConfigError, match="rollout"):
        load_config(None, overrides)
