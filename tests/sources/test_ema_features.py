"""An EMA teacher's activations are the shadow's, never the live student's: equal to a plain hooked forward
of the shadow, alone and inside several teachers (each teacher's activations keyed by its name)."""
import torch
from helpers import tiny_llama, tiny_tokenizer

from kdistill.models.activations import capture
from kdistill.sources.ema import EmaSource
from kdistill.sources.model import ModelSource, teacher_signal
from kdistill.sources.multi import MultiSource

REQUEST = {0: ("normed", "residual", "update"), 1: ("attn_out", "qk")}


def _batch(b=3, t=7):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 300, (b, t), generator=g)
    am = torch.ones(b, t, dtype=torch.long)
    am[2, -2:] = 0
    return {"input_ids": ids, "attention_mask": am, "targets": torch.roll(ids, -1, 1), "mask": am.bool()}


def _plain(model, batch, request=REQUEST):
    with torch.no_grad(), capture(model, request) as found:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return found


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for layer, kept in a.items():
        assert kept.keys() == b[layer].keys()
        for name, v in kept.items():
            if isinstance(v, dict):  # qk: projections, rotary cos/sin and head counts
                for k in v:
                    assert torch.equal(v[k], b[layer][name][k]) if torch.is_tensor(v[k]) else v[k] == b[layer][name][k]
            else:
                assert torch.equal(v, b[layer][name]), (layer, name)


def _logits(signal):
    return signal.logits if signal.logits is not None else signal.hidden @ signal.weight.T


def _moved_ema():
    student = tiny_llama(300, seed=1).train()
    ema = EmaSource("ema", update_rate=0.5, every=1)
    ema.attach_student(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ema.after_step(student, 1)  # the shadow is now halfway: neither the old student nor the new one
    return student, ema


def test_ema_activations_are_a_plain_forward_of_the_shadow():
    student, ema = _moved_ema()
    batch = _batch()
    signal, found = ema.signal_and_activations(batch, 300, REQUEST)
    _same(found, _plain(ema.model, batch))
    assert not found[0]["residual"].requires_grad
    assert not torch.allclose(found[0]["residual"], _plain(student.eval(), batch)[0]["residual"])
    assert torch.equal(_logits(signal), _logits(teacher_signal(ema.model, batch, 300)))


def test_several_teachers_give_each_ones_activations_keyed_by_name():
    _, ema = _moved_ema()
    teacher = ModelSource(tiny_llama(300, seed=0, num_hidden_layers=3), tiny_tokenizer(), "")
    teacher.against = "t"
    source = MultiSource([teacher, ema], [0.6, 0.4], "sum", None, teacher.model)
    assert source.provides_activations
    assert [(e["name"], e["weight"], e["copied"]) for e in source.feature_teachers()] == \
        [("t", 0.6, "init"), ("ema", 0.4, "self")]
    batch = _batch()
    asked = {"t": {2: ("normed",), 1: ("qk",)}, "ema": REQUEST}
    signal, found = source.signal_and_activations(batch, 300, asked)
    _same(found["t"], _plain(teacher.model, batch, asked["t"]))
    _same(found["ema"], _plain(ema.model, batch))
    plain = source.signal(batch, 300)
    for got, want in zip(signal.parts, plain.parts):
        assert got.name == want.name and got.weight == want.weight
        assert torch.equal(_logits(got.signal), _logits(want.signal))
