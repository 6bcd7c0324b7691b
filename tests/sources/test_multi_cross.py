"""Several teachers with different tokenizers distilled into one student (teacher.sources with
student.tokenizer): a teacher sharing the student's tokenizer keeps its exact token-level signal, one with
another is aligned by bytes as a single cross-tokenizer teacher is; `sum` is the weighted sum of each
teacher's loss alone (values and gradients), `route` scores each example by its own teacher only, a run
trains and reports held-out metrics per teacher, and what needs one vocabulary is refused before loading."""
import json

import pytest
import torch
from cross_helpers import other_tokenizer
from helpers import save_tiny_teacher, tiny_llama, tiny_tokenizer

from kdistill.base.errors import ConfigError, ModelError
from kdistill.config.checks import check_supported
from kdistill.config.schema import load_config
from kdistill.data.pairs import render_pairs
from kdistill.losses import build_objective
from kdistill.losses.signals import DENSE, GROUPS
from kdistill.run.distill import distill
from kdistill.sources.cross import CrossTokenizerSource, collate_pairs, render_aligned
from kdistill.sources.model import ModelSource, teacher_signal
from kdistill.sources.multi import MultiSource

TEXTS = ["Once upon a time there was a little fox.", "Crème brûlée à la française, très bon 👋🎉!",
         "日本語 and emoji 🚀🚀 mixed with naïve façade", "def add(a, b):\n    return a + b\n"]
RECORDS = [{"instruction": f"Tell me thing {i}.", "response": t, "domain": "b" if i % 3 else "a"}
           for i, t in enumerate(TEXTS * 3)]
TERMS = "loss.terms=[{kind: hybrid, top_k: 20}, {kind: ce, weight: 0.1}]"
FAST = ["train.seq_len=48", "train.batch_size=4", "train.threads=1", "student.num_layers=1",
        "eval.max_new_tokens=3", "eval.measure_speed=false", "eval.max_batches=1", "data.heldout_fraction=0.25",
        "train.max_steps=3", "train.eval_every=3", TERMS]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """a: the tiny teacher (tiny_tokenizer); b: another teacher with another tokenizer; third: a student
    tokenizer neither teacher reads; data: RECORDS."""
    d = tmp_path_factory.mktemp("multi_cross")
    a = save_tiny_teacher(d / "a", seed=0)
    tok = other_tokenizer()
    tiny_llama(len(tok), seed=1).save_pretrained(d / "b")
    tok.save_pretrained(d / "b")
    tiny_tokenizer(300).save_pretrained(d / "third")
    (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return {"a": a, "b": str(d / "b"), "third": str(d / "third"), "data": str(d / "data.jsonl")}


def _sources(folders, combine="sum") -> list[str]:
    route = ["teacher.combine=route", "teacher.route_key=domain"] if combine == "route" else []
    return [f"teacher.sources=[{{name: a, model: {folders['a']}, weight: 0.6}}, "
            f"{{name: b, model: {folders['b']}, weight: 0.4}}]", f"data.path={folders['data']}", *route]


def _open(folders, student_tok="a", combine="sum"):
    cfg = load_config(None, [*_sources(folders, combine), f"student.tokenizer={folders[student_tok]}", *FAST])
    source = MultiSource.open(cfg, torch.device("cpu"), torch.float32)
    examples = source.load_examples(cfg, torch.device("cpu"))
    return source, examples, source.collate(examples[:4], source.tokenizer.pad_token_id)


def _alone(child, source, examples, rendered_alone=False):
    """A child as the only teacher (its signal, its batch) on the first 4 examples: as `source` made them,
    or (`rendered_alone`) as a single-teacher run renders the records."""
    if not isinstance(child, CrossTokenizerSource):
        batch = source.collate(examples[:4], source.tokenizer.pad_token_id)
        return teacher_signal(child.model, batch, source.vocab_size), batch
    single = CrossTokenizerSource(ModelSource(child.inner.model, child.teacher_tokenizer, ""), source.tokenizer)
    own = [{**e, **child.side(e)} for e in examples[:4]]
    if rendered_alone:
        own = render_pairs(RECORDS[:4], source.tokenizer, single.teacher_tokenizer, 48, 192)
    batch = collate_pairs(own, source.tokenizer.pad_token_id, single.teacher_tokenizer.pad_token_id)
    return single.signal(batch, source.vocab_size), batch


def test_each_teacher_keeps_its_own_signal(folders):
    source, examples, batch = _open(folders)
    assert [type(c).__name__ for c in source.children] == ["ModelSource", "CrossTokenizerSource"]
    mixture = source.signal(batch, source.vocab_size)
    assert [(p.name, p.weight, p.signal.form) for p in mixture.parts] == [("a", 0.6, DENSE), ("b", 0.4, GROUPS)]
    exact, _ = _alone(source.children[0], source, examples)  # a shares the student's tokenizer: token by token
    rows = torch.arange(batch["mask"].numel())
    torch.testing.assert_close(mixture.parts[0].signal.take(rows).logits, exact.take(rows).logits)
    want, single = _alone(source.children[1], source, examples, True)  # b: as the single cross-tokenizer teacher
    assert torch.equal(single["input_ids"], batch["input_ids"]) and torch.equal(single["mask"], batch["mask"])
    got = mixture.parts[1].signal
    assert torch.equal(got.group_of, want.group_of) and got.teacher_tokens == want.teacher_tokens > 0
    groups = torch.arange(len(want.teacher_rest))
    for x, y in zip(got.take_groups(groups), want.take_groups(groups)):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("student_tok", ["a", "third"])
def test_sum_is_the_weighted_sum_of_each_teacher_alone(folders, student_tok):
    """Values and gradients; with a third tokenizer neither teacher shares the student's."""
    source, examples, batch = _open(folders, student_tok)
    kinds = [p.signal.form for p in source.signal(batch, source.vocab_size).parts]
    assert kinds == ([DENSE, GROUPS] if student_tok == "a" else [GROUPS, GROUPS])
    student = tiny_llama(source.vocab_size, seed=4)
    objective = build_objective([{"kind": "hybrid", "top_k": 20}, {"kind": "ce", "weight": 0.1}])
    params = [student.lm_head.weight, student.model.layers[0].mlp.up_proj.weight]

    def loss_and_grads(signal, b):
        hidden = student.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
        out = objective(hidden, student.lm_head.weight, signal, b["targets"], b["mask"], int(b["mask"].sum()))
        return out, torch.autograd.grad(out.loss, params)

    mixed, mixed_grads = loss_and_grads(source.signal(batch, source.vocab_size), batch)
    want, want_grads = 0.0, [0.0 for _ in params]
    for child, w in zip(source.children, source.weights):
        out, g = loss_and_grads(*_alone(child, source, examples))
        want, want_grads = want + w * out.loss, [x + w * y for x, y in zip(want_grads, g)]
        assert mixed.terms[f"hybrid/{child.against}"] == pytest.approx(out.terms["hybrid"], rel=1e-5)
    torch.testing.assert_close(mixed.loss, want, rtol=1e-5, atol=1e-6)
    for got, ref in zip(mixed_grads, want_grads):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)


def test_route_sends_each_example_only_to_its_teacher(folders):
    source, examples, batch = _open(folders, combine="route")
    route = batch["route"].tolist()
    assert route == [0 if RECORDS[i]["domain"] == "a" else 1 for i in range(4)] and 0 in route and 1 in route
    mixture = source.signal(batch, source.vocab_size)
    a, b = mixture.parts
    t = batch["mask"].shape[1]
    a_rows = [i for i, r in enumerate(route) if r == 0]
    assert sorted(set((a.local >= 0).nonzero().squeeze(-1).div(t, rounding_mode="floor").tolist())) == a_rows
    assert b.examples.tolist() == [i for i, r in enumerate(route) if r == 1]
    assert b.signal.group_of.numel() == len(b.examples) * t  # b read only its own examples
    student = tiny_llama(source.vocab_size, seed=4)
    objective = build_objective([{"kind": "hybrid", "top_k": 20}, {"kind": "ce", "weight": 0.1}])
    hidden = student.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    n = int(batch["mask"].sum())
    out = objective(hidden, student.lm_head.weight, mixture, batch["targets"], batch["mask"], n)
    total = 0.0
    for child, rows in zip(source.children, (torch.tensor(a_rows), b.examples)):
        sub = {k: v[rows] for k, v in batch.items()}
        signal = child.signal(sub, source.vocab_size)
        total = total + objective(hidden[rows], student.lm_head.weight, signal, sub["targets"], sub["mask"], n).loss
    torch.testing.assert_close(out.loss, total, rtol=1e-5, atol=1e-6)
    assert out.terms["hybrid"] == pytest.approx(out.terms["hybrid/a"] + out.terms["hybrid/b"], rel=1e-6)


def test_every_teacher_cuts_a_long_response_at_one_student_token():
    """A response too long for train.seq_len or a teacher's limit, so that alone each teacher would cut it
    elsewhere: every side keeps the same student tokens, and each teacher's groups cover exactly the
    student's loss positions and the teacher's own tokens."""
    from kdistill.data.pairs import render_pair

    student, teachers = tiny_tokenizer(300), {"a": (tiny_tokenizer(), 40), "b": (other_tokenizer(), 60)}
    record = {"instruction": "Say it.", "response": " ".join(TEXTS)}
    apart = 0
    for seq_len in (31, 48, 200):
        alone = {n: render_pair(record, student, tok, seq_len, limit, "instruction", "auto", "t")
                 for n, (tok, limit) in teachers.items()}
        apart += len({len(e["ids"]) for e in alone.values()}) > 1
        e = render_aligned(record, student, teachers, seq_len, "instruction", "auto", "test")
        assert len(e["ids"]) == min(len(x["ids"]) for x in alone.values()) and 0 < e["bytes"] < len(record["response"])
        start = e["mask"].index(True)
        for name, side in e["pairs"].items():
            spans = side["groups"]
            assert spans[0][0] == start and spans[-1][1] == len(e["ids"]) <= seq_len + 1
            assert spans[-1][3] == len(side["teacher_ids"]) <= teachers[name][1] + 1
            assert all(x[1] == y[0] and x[3] == y[2] for x, y in zip(spans, spans[1:]))
    assert apart  # at least one length where the teachers alone cut apart


def test_one_vocabulary_combine_modes_are_refused(folders):
    cfg = load_config(None, [*_sources(folders), f"student.tokenizer={folders['third']}", *FAST])
    cfg.teacher.combine = "mean"  # averaging probabilities token by token needs one vocabulary
    with pytest.raises(ConfigError, match=r"teacher.combine=mean mixes .* use teacher.combine=sum .* or route"):
        check_supported(cfg)


def test_a_cache_among_teachers_across_tokenizers_is_refused_before_loading(folders, tmp_path):
    cache = tmp_path / "cache"
    cfg = load_config(None, [f"teacher.sources=[{{name: a, model: {folders['a']}}}, {{name: c, cache: {cache}}}]",
                             f"data.path={folders['data']}", f"student.tokenizer={folders['third']}",
                             f"output_dir={tmp_path / 'run'}", *FAST])
    with pytest.raises(ConfigError, match=r"teacher.sources\[1\].cache=.* own tokens only"):
        distill(cfg)
    assert not (tmp_path / "run").exists()


def test_teachers_of_two_tokenizers_without_student_tokenizer_say_how(folders, tmp_path):
    cfg = load_config(None, [*_sources(folders), f"output_dir={tmp_path / 'run'}", *FAST])
    with pytest.raises(ModelError, match="another tokenizer.*set student.tokenizer"):
        distill(cfg)


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_distill_from_two_tokenizers_trains_and_reports_each_teacher(folders, tmp_path):
    out = tmp_path / "run"
    result = distill(load_config(None, [*_sources(folders), f"student.tokenizer={folders['a']}",
                                        f"output_dir={out}", *FAST]))
    rows = _rows(out)
    steps = [r for r in rows if r.get("loss") is not None]
    assert len(steps) == 3 and all(0 < r["loss"] < 1e3 and r["hybrid/b"] > 0 for r in steps)
    assert steps[0]["hybrid"] == pytest.approx(0.6 * steps[0]["hybrid/a"] + 0.4 * steps[0]["hybrid/b"], rel=1e-5)
    assert "kl_quantiles" in result["heldout_a"]  # a shares the student's tokenizer: per token
    held_b = result["heldout_b"]  # b: per aligned group and per byte, as one cross-tokenizer teacher
    assert held_b["per"] == "aligned group" and held_b["bytes"] > 0 and held_b["bpb_teacher"] > 0
    assert held_b["teacher_tokens"] > 0 and "eval_b_kl" in rows[-1] and "eval_mixture_kl" not in rows[-1]
    assert result["heldout_b"]["kl"] < result["heldout_b_start"]["kl"]  # the student moved toward b
    assert result["teacher_source"]["kind"] == "multi"
    assert [s["name"] for s in result["teacher_source"]["sources"]] == ["a", "b"]


def test_route_from_the_command_line(folders, tmp_path):
    from kdistill.commands.cli import main

    out = tmp_path / "run"
    assert main(["distill", *_sources(folders, "route"), f"student.tokenizer={folders['third']}",
                 f"output_dir={out}", *FAST]) == 0
    steps = [r for r in _rows(out) if r.get("loss") is not None]
    assert len(steps) == 3
    for r in steps:  # each token scored by its own teacher, counted once
        assert r["hybrid"] == pytest.approx(r.get("hybrid/a", 0.0) + r.get("hybrid/b", 0.0), rel=1e-5)
    assert {"heldout_a", "heldout_b"} <= set(json.loads((out / "eval.json").read_text()))
