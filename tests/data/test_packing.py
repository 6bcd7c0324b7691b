"""Instruction records packed several per row (data/packing.py): the rows, and exactness against each
record read alone: the student's and teacher's logits token by token, and the loss and its gradient."""
import random

import pytest
import torch
from helpers import tiny_llama, tiny_teacher, tiny_tokenizer

from kdistill.base.errors import ConfigError
from kdistill.data.batches import collate
from kdistill.data.packing import (
    block_mask,
    model_inputs,
    pack,
    positions,
    why_not_packable,
)
from kdistill.losses import build_objective
from kdistill.models.heads import final_hidden
from kdistill.sources.model import teacher_signal
from kdistill.train.step import StudentLoss

VOCAB, SEQ = 300, 40


def records(n=9, seed=0) -> list[dict]:
    """Instruction-like examples: a prompt (mask False) then a response, of varied lengths."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        n_prompt, n_response = rng.randint(1, 12), rng.randint(2, 14)
        ids = [rng.randrange(3, VOCAB) for _ in range(n_prompt + n_response)]
        out.append({"ids": ids, "mask": [j >= n_prompt for j in range(len(ids))], "group": rng.random()})
    return out


def test_rows_hold_every_record_once_within_seq_len_deterministically():
    examples = records(30)
    rows, report = pack(examples, SEQ, seed=3)
    assert pack(examples, SEQ, seed=3)[0] == rows
    assert all(len(r["ids"]) <= SEQ + 1 for r in rows) and len(rows) < len(examples)
    pieces = sorted(tuple(r["ids"][i:j]) for r in rows for i, j in spans(r["segments"]))
    assert pieces == sorted(tuple(e["ids"]) for e in examples)
    assert sum(sum(r["mask"]) for r in rows) == sum(sum(e["mask"][1:]) for e in examples)
    assert report["rows_before"] == 30 and report["rows_after"] == len(rows) == report["rows_after"]
    assert report["fill_after"] > report["fill_before"] and report["fill_after"] <= 1.0


def spans(segments: list[int]) -> list[tuple[int, int]]:
    starts = [i for i, s in enumerate(segments) if i == 0 or s != segments[i - 1]]
    return list(zip(starts, starts[1:] + [len(segments)]))


def test_positions_restart_and_the_mask_is_block_diagonal_causal():
    seg = torch.tensor([[0, 0, 0, 1, 1, -1]])
    assert positions(seg).tolist() == [[0, 1, 2, 0, 1, 0]]
    allowed = block_mask(seg)[0, 0] == 0
    assert allowed.tolist() == [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0],
                                [0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1]]


def packed_and_alone(seed=0):
    examples = records(7, seed)
    rows, _ = pack(examples, SEQ, seed=seed)
    assert any(len(spans(r["segments"])) > 1 for r in rows)
    return rows, collate(rows, 0)


def logits(model, batch):
    return final_hidden(model, **model_inputs(batch, model)) @ model.get_output_embeddings().weight.T


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_packed_row_gives_each_record_its_own_logits(arch, attention):
    model = tiny_teacher(arch, VOCAB, seed=0, attn_implementation=attention)
    assert why_not_packable(model, SEQ) is None and model.config._attn_implementation == attention
    rows, batch = packed_and_alone()
    with torch.no_grad():
        packed = logits(model, batch)
        heldout = model(**model_inputs(batch, model)).logits
        signal = teacher_signal(model, batch, VOCAB)
    torch.testing.assert_close(heldout, packed, atol=1e-5, rtol=1e-5)
    for b, row in enumerate(rows):
        for k, (i, j) in enumerate(spans(row["segments"])):
            alone = {"ids": row["ids"][i:j], "mask": row["mask"][i:j]}
            with torch.no_grad():
                own = logits(model, collate([alone], 0))[0]
            n = j - i - 1  # the record's input tokens
            torch.testing.assert_close(packed[b, i:i + n], own, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(signal.hidden[b, i:i + n] @ signal.weight.T, own, atol=1e-5, rtol=1e-5)


def test_the_loss_and_its_gradient_over_packed_rows_are_those_over_the_records():
    student, teacher = tiny_llama(VOCAB, seed=1).train(), tiny_llama(VOCAB, seed=0)
    examples = records(8, seed=2)
    rows, _ = pack(examples, SEQ, seed=2)
    objective = build_objective([{"kind": "forward_kl", "temperature": 2.0}, {"kind": "ce", "weight": 0.3}])
    model = StudentLoss(student, objective)

    def loss_and_grads(batch):
        student.zero_grad()
        n = int(batch["mask"].sum())
        loss, _ = model(batch, teacher_signal(teacher, batch, VOCAB), n, 0.0)
        loss.backward()
        return loss.detach(), n, {k: p.grad.clone() for k, p in student.named_parameters() if p.grad is not None}

    packed_loss, packed_n, packed_grads = loss_and_grads(collate(rows, 0))
    alone_loss, alone_n, alone_grads = loss_and_grads(collate(examples, 0))
    assert packed_n == alone_n
    torch.testing.assert_close(packed_loss, alone_loss, atol=1e-5, rtol=1e-5)
    for k, g in alone_grads.items():
        torch.testing.assert_close(packed_grads[k], g, atol=1e-5, rtol=1e-4)


def test_other_models_say_why_they_do_not_pack():
    assert "GPT2LMHeadModel is not among" in why_not_packable(tiny_teacher("gpt2", VOCAB), SEQ)
    window = tiny_teacher("mistral", VOCAB, sliding_window=16)
    assert "sliding window of 16 tokens" in why_not_packable(window, SEQ)
    assert why_not_packable(tiny_llama(len(tiny_tokenizer())), SEQ) is None


class FakeSource:
    """What `why_not_pack` reads of a source: its live teacher models."""

    def __init__(self, model):
        self.init_model = model

    def references(self):
        return [self]


def config(*more):
    from kdistill.config.schema import load_config

    return load_config(None, ["teacher.model=default", *more])


def test_auto_packs_instruction_data_with_a_live_llama_teacher_only():
    from kdistill.data.packing import why_not_pack

    llama, gpt2 = FakeSource(tiny_llama(VOCAB)), FakeSource(tiny_teacher("gpt2", VOCAB))
    assert why_not_pack(config(), "instruction", llama) is None
    assert why_not_pack(config(), "generated", llama) is None
    assert why_not_pack(config("data.pack=true"), "text", llama) is None
    assert why_not_pack(config(), "text", llama) == "plain text is packed into blocks already"
    assert why_not_pack(config("data.pack=false"), "instruction", llama) == "data.pack=false"
    assert "GPT2LMHeadModel is not among" in why_not_pack(config(), "instruction", gpt2)
    assert "set data.pack=true" in why_not_pack(config("student.kind=pretrained", "student.model=x"), "instruction",
                                                llama)
    assert why_not_pack(config("teacher.cache=c"), "instruction", llama).startswith("data.pack=auto: teacher cache c")
    with pytest.raises(ConfigError, match=r"data.pack=true: the teacher GPT2LMHeadModel .*set data.pack=auto or false"):
        why_not_pack(config("data.pack=true"), "instruction", gpt2)


@pytest.mark.parametrize("more, said", [
    (["teacher.cache=c"], "teacher cache c stores one signal per unpacked example; drop it"),
    (["teacher.server=http://localhost:8000"], "scores one sequence per row"),
    (["rollout.source=student", "rollout.lmbda=0.5"], "rollout.source=student writes text .* set rollout.lmbda=0"),
    (["student.kind=fractal"], "student.kind=fractal reads a padding mask only"),
])
def test_pack_true_is_refused_where_it_is_not_exact(more, said):
    from kdistill.config.checks import check_supported, pack_refusals

    with pytest.raises(ConfigError, match=rf"data.pack=true packs records .*{said}.*data.pack=auto .*data.pack=false"):
        check_supported(config("data.pack=true", *more))
    check_supported(config(*more))  # auto: one record per row, said in the log
    assert pack_refusals(config("student.tokenizer=t")) == [
        "student.tokenizer=t aligns each example with the teacher's tokens"]


def test_heldout_metrics_of_packed_rows_are_those_of_the_records():
    from kdistill.evaluation.heldout import heldout_metrics
    from kdistill.sources.model import ModelSource

    student, teacher = tiny_llama(VOCAB, seed=1), tiny_llama(VOCAB, seed=0)
    examples = records(8, seed=4)
    rows, _ = pack(examples, SEQ, seed=4)
    source = ModelSource(teacher, tiny_tokenizer(), "")
    packed = heldout_metrics(student, source, [collate(rows, 0)], torch.device("cpu"))
    alone = heldout_metrics(student, source, [collate(examples, 0)], torch.device("cpu"))
    assert packed["tokens"] == alone["tokens"] and packed["top1_agreement"] == alone["top1_agreement"]
    for key in ("kl", "js", "ppl_student", "ppl_teacher"):
        assert packed[key] == pytest.approx(alone[key], rel=1e-5)
    assert packed["kl_by_position"] == pytest.approx(alone["kl_by_position"], rel=1e-4, abs=1e-7)
