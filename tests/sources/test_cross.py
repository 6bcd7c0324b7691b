"""Cross-tokenizer distillation end to end on tiny models: groups, signals, a run from config, bad inputs."""
import json

import pytest
import torch
from cross_helpers import other_tokenizer, save_other_tokenizer
from helpers import tiny_llama, tiny_tokenizer

from kdistill.base.errors import ConfigError, DataError
from kdistill.config.schema import load_config
from kdistill.data.pairs import render_pairs
from kdistill.data.token_bytes import encode_bytes
from kdistill.losses import DenseSignal, build_objective
from kdistill.losses.cross.alignment import byte_groups
from kdistill.run.distill import distill
from kdistill.sources.cross import CrossTokenizerSource, collate_pairs
from kdistill.sources.model import ModelSource, teacher_signal

TEXTS = ["Once upon a time there was a little fox.", "Crème brûlée à la française, très bon 👋🎉!",
         "日本語 and emoji 🚀🚀 mixed with naïve façade", "def add(a, b):\n    return a + b\n"]
RECORDS = [{"instruction": f"Tell me thing {i}.", "response": t} for i, t in enumerate(TEXTS * 3)]


@pytest.mark.parametrize("text", TEXTS)
def test_groups_partition_both_sequences_over_equal_bytes(text):
    a, b = tiny_tokenizer(), other_tokenizer()
    s_ids, s_len = encode_bytes(a, text, "t")
    t_ids, t_len = encode_bytes(b, text, "t")
    groups = byte_groups(s_len, t_len)
    assert [g[0] for g in groups] == [0] + [g[1] for g in groups[:-1]] and groups[-1][1] == len(s_ids)
    assert [g[2] for g in groups] == [0] + [g[3] for g in groups[:-1]] and groups[-1][3] == len(t_ids)
    s_bytes = [sum(s_len[g[0]:g[1]]) for g in groups]
    assert s_bytes == [sum(t_len[g[2]:g[3]]) for g in groups] and sum(s_bytes) == len(text.encode())
    assert all(x > 0 for x in s_bytes)
    if any(ord(c) > 127 for c in text):  # multibyte characters: some token holds part of one
        assert len(groups) < max(len(s_ids), len(t_ids))


def test_one_tokenizer_gives_one_to_one_groups():
    tok = tiny_tokenizer()
    for text in TEXTS:
        _, lengths = encode_bytes(tok, text, "t")
        assert byte_groups(lengths, lengths) == [(i, i + 1, i, i + 1) for i in range(len(lengths))]


def test_text_a_tokenizer_cannot_encode_is_named():
    with pytest.raises(DataError, match=r"rec 7.*cannot encode this text losslessly.*special"):
        encode_bytes(tiny_tokenizer(), "stop <|im_end|> here", "rec 7")


def _source(teacher_model, student_tok):
    return CrossTokenizerSource(ModelSource(teacher_model, tiny_tokenizer(), ""), student_tok)


def test_merged_group_probability_is_the_product_of_its_conditionals():
    teacher = tiny_llama(len(tiny_tokenizer()), seed=1)
    source = _source(teacher, other_tokenizer())
    examples = render_pairs(RECORDS[:4], source.tokenizer, source.teacher_tokenizer, 64, 64)
    batch = source.collate(examples, source.tokenizer.pad_token_id)
    signal = source.signal(batch, len(source.tokenizer))
    k, e = 0, examples[1]
    for g, (_, _, c, d) in enumerate(e["groups"]):  # example 1's groups, after example 0's
        k = len(examples[0]["groups"]) + g
        if d - c > 1:
            break
    assert d - c > 1, "no multi-token teacher group to test"
    ids = torch.tensor([e["teacher_ids"]])
    lp = teacher(input_ids=ids).logits.log_softmax(-1)[0]
    product = sum(lp[j - 1, e["teacher_ids"][j]] for j in range(c, d))
    glp, first = signal.take_groups(torch.tensor([k]))
    torch.testing.assert_close(glp[0, first[0]], product.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(glp.exp().sum(), torch.tensor(1.0), rtol=1e-5, atol=1e-5)


def test_one_tokenizer_through_the_source_equals_the_plain_divergence():
    tok = tiny_tokenizer()
    teacher, student = tiny_llama(len(tok), seed=1), tiny_llama(len(tok), seed=2).double()
    source = _source(teacher, tiny_tokenizer())
    batch = collate_pairs(render_pairs(RECORDS[:4], source.tokenizer, source.teacher_tokenizer, 64, 64),
                          tok.pad_token_id, tok.pad_token_id)
    assert torch.equal(batch["input_ids"], batch["teacher_input_ids"])
    hidden = student.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    args = (hidden, student.lm_head.weight)
    tail = (batch["targets"], batch["mask"], int(batch["mask"].sum()))
    cross = build_objective([{"kind": "hybrid"}, {"kind": "ce", "weight": 0.1}])(
        *args, source.signal(batch, len(tok)), *tail)
    plain = build_objective([{"kind": "forward_kl"}, {"kind": "ce", "weight": 0.1}])(
        *args, DenseSignal(logits=teacher_signal(teacher, batch, len(tok)).take(
            torch.arange(batch["mask"].numel())).logits.reshape(*batch["mask"].shape, -1)), *tail)
    torch.testing.assert_close(cross.loss, plain.loss, rtol=1e-5, atol=1e-6)


def _data(tmp_path, records=RECORDS):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


FAST = ["train.seq_len=48", "train.batch_size=4", "train.threads=1", "student.num_layers=1",
        "eval.max_new_tokens=3", "eval.measure_speed=false", "eval.max_batches=1", "data.heldout_fraction=0.25",
        "loss.terms=[{kind: hybrid, top_k: 20}, {kind: ce, weight: 0.1}]"]


def test_distill_trains_a_student_with_another_tokenizer(teacher_dir, tmp_path):
    tok_dir = save_other_tokenizer(tmp_path / "tok")
    out = tmp_path / "run"
    result = distill(load_config(None, [f"teacher.model={teacher_dir}", f"student.tokenizer={tok_dir}",
                                        f"data.path={_data(tmp_path)}", f"output_dir={out}", "train.max_steps=3",
                                        "train.eval_every=3", *FAST]))
    held = result["heldout"]
    assert held["bytes"] > 0 and held["groups"] > 0 and held["bpb_student"] > 0 and held["bpb_teacher"] > 0
    assert 0 <= held["top1_agreement"] <= 1 and held["kl"] >= 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 3 and rows[-1]["hybrid"] > 0 and "eval_kl" in rows[-1]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    student = AutoModelForCausalLM.from_pretrained(out / "student")
    assert student.config.vocab_size == len(other_tokenizer())
    assert AutoTokenizer.from_pretrained(out / "student").get_vocab() == other_tokenizer().get_vocab()
    assert len(result["completions"]["student"]) == 3

    from kdistill.commands.cli import main

    assert main(["eval", "--run", str(out), "--no-speed", "--max-new-tokens", "2"]) == 0
    again = json.loads((out / "eval.json").read_text())["heldout"]
    for key in ("bpb_student", "bpb_teacher", "top1_agreement", "kl", "groups", "bytes"):
        assert again[key] == pytest.approx(held[key], rel=1e-4, abs=1e-6), key  # the same split, measured again


@pytest.mark.parametrize("override, message", [
    (["teacher.cache=runs/x"], "teacher.cache=runs/x holds the teacher's signal for its own tokens only"),
    (["loss.terms=[{kind: forward_kl}]"], r"loss.terms\[0\].kind=forward_kl compares token by token"),
    (["rollout.source=student", "rollout.lmbda=0.5", "rollout.max_new_tokens=8"], "rollout: on-policy text"),
])
def test_what_cross_tokenizer_runs_cannot_do_is_refused_before_loading(teacher_dir, tmp_path, override, message):
    cfg = load_config(None, [f"teacher.model={teacher_dir}", f"student.tokenizer={save_other_tokenizer(tmp_path / 't')}",
                             f"data.path={_data(tmp_path)}", f"output_dir={tmp_path / 'run'}", *FAST, *override])
    with pytest.raises(ConfigError, match=message):
        distill(cfg)
    assert not (tmp_path / "run").exists()


def test_lossless_encoding_is_checked_before_loading(teacher_dir, tmp_path):
    bad = RECORDS[:3] + [{"instruction": "x", "response": "the end <|im_end|> really"}]
    cfg = load_config(None, [f"teacher.model={teacher_dir}", f"student.tokenizer={save_other_tokenizer(tmp_path / 't')}",
                             f"data.path={_data(tmp_path, bad)}", f"output_dir={tmp_path / 'run'}", *FAST])
    with pytest.raises(DataError, match=r"data.jsonl, line 4 \(teacher tokenizer\): tokenizer .*teacher.* cannot encode this text losslessly"):
        distill(cfg)


def test_no_shared_strings_says_hybrid_falls_back_to_uld(teacher_dir, tmp_path, monkeypatch, capsys):
    import kdistill.losses.cross.alignment as alignment
    from kdistill.sources.cross_checks import check_cross

    empty = (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    monkeypatch.setattr(alignment, "string_pairs", lambda a, b: empty)
    check_cross(load_config(None, [f"teacher.model={teacher_dir}", f"data.path={_data(tmp_path)}",
                                   f"student.tokenizer={save_other_tokenizer(tmp_path / 't')}", *FAST]))
    assert "share no strings; loss kind hybrid falls back to uld only" in capsys.readouterr().out


def test_a_pretrained_student_with_its_own_tokenizer(teacher_dir, tmp_path):
    folder = tmp_path / "pretrained"
    tiny_llama(len(other_tokenizer()), seed=3).save_pretrained(folder)
    other_tokenizer().save_pretrained(folder)
    result = distill(load_config(None, [f"teacher.model={teacher_dir}", "student.kind=pretrained",
                                        f"student.model={folder}", f"student.tokenizer={folder}",
                                        f"data.path={_data(tmp_path)}", f"output_dir={tmp_path / 'run'}",
                                        "train.max_steps=2", *FAST]))
    assert "distilled across tokenizers" in result["student_init"]["tokenizer"]
    assert result["heldout"]["bpb_student"] > 0


def test_a_llama_student_takes_its_own_tokenizers_ids_and_fresh_embeddings(tmp_path):
    from kdistill.students import build_student

    tok = other_tokenizer()
    teacher = tiny_llama(1000, seed=1, pad_token_id=900, eos_token_id=901, bos_token_id=902)  # ids past the student's
    cfg = load_config(None, [f"student.tokenizer={tmp_path}", "student.num_layers=1", "student.layer_selection=even"])
    student, report = build_student(cfg, teacher, len(tok), None, tok)
    assert (student.config.pad_token_id, student.config.eos_token_id) == (tok.pad_token_id, tok.eos_token_id)
    assert report["vocab_size"] == len(tok) and len(report["layers"]) == 1  # a teacher layer still copied
    s, t = student.get_input_embeddings().weight, teacher.get_input_embeddings().weight
    assert not torch.allclose(s[:10], t[:10])  # no row copied by id
    source = _source(teacher, tok)
    source.copy_embeddings = True
    source.attach_student(student)
    s_ids, t_ids = source.pairs(len(tok))
    torch.testing.assert_close(student.get_input_embeddings().weight[s_ids[:-1]], t[t_ids[:-1]])
