"""Every kind of teacher source has every member of `TeacherSource`, each method with the protocol's
signature, so the run never needs to ask which kind it has."""
import importlib
import inspect
import pkgutil
from types import SimpleNamespace

import pytest
import torch
from helpers import tiny_llama, tiny_tokenizer

import kdistill.sources
from kdistill.sources.base import TeacherSource
from kdistill.sources.cached import CacheSource
from kdistill.sources.cross import CrossTokenizerSource
from kdistill.sources.ema import EmaSource
from kdistill.sources.model import ModelSource
from kdistill.sources.multi import MultiSource
from kdistill.sources.reuse import ReuseSource
from kdistill.sources.served import ServedSource
from kdistill.sources.server_client import ServerClient

KINDS = (ModelSource, CacheSource, MultiSource, EmaSource, CrossTokenizerSource, ServedSource, ReuseSource)


def _members() -> tuple[dict, list[str]]:
    """({method name: function}, [data member names]) of the protocol."""
    methods, data = {}, []
    for name, value in vars(TeacherSource).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            data.append(name)
        elif inspect.isfunction(value):
            methods[name] = value
    return methods, data


def _parameters(function) -> list[tuple]:
    """(name, kind, default) of each parameter but self."""
    return [(p.name, p.kind, p.default) for p in list(inspect.signature(function).parameters.values())[1:]]


@pytest.fixture(scope="module")
def sources() -> dict:
    tok = tiny_tokenizer()
    model = ModelSource(tiny_llama(len(tok)), tok, "")
    cache = SimpleNamespace(load_tokenizer=tiny_tokenizer, vocab_size=len(tok), examples=[])
    ema = EmaSource("ema", update_rate=0.5, every=1)
    ema.attach_student(tiny_llama(len(tok), seed=1))
    return {ModelSource: model, CacheSource: CacheSource(cache, None, None, False),
            MultiSource: MultiSource([model], [1.0], "sum", None, model.model), EmaSource: ema,
            CrossTokenizerSource: CrossTokenizerSource(model, tiny_tokenizer()),
            ReuseSource: ReuseSource(model, 8, 16.0),
            ServedSource: ServedSource(ServerClient("http://127.0.0.1:9/v1"), 4, tok, model.model.config, None, "",
                                       "tiny")}


def test_the_protocol_documents_every_member():
    methods, data = _members()
    assert len(methods) + len(data) == 22
    for name in [*methods, *data]:
        assert (inspect.getdoc(getattr(TeacherSource, name)) or "").strip(), name


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_every_method_has_the_protocols_signature(kind):
    methods, _ = _members()
    for name, wanted in methods.items():
        found = getattr(kind, name, None)
        assert callable(found), f"{kind.__name__} has no method {name}"
        assert _parameters(found) == _parameters(wanted), f"{kind.__name__}.{name}{inspect.signature(found)}"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_every_data_member_is_there(kind, sources):
    _, data = _members()
    source = sources[kind]
    missing = [name for name in data if not hasattr(source, name)]
    assert not missing, f"{kind.__name__} lacks {missing}"
    assert isinstance(source, TeacherSource)


def test_every_source_class_is_checked():
    """A new kind of source in kdistill/sources is a class with `collate` and `signal`: it belongs in KINDS."""
    found = set()
    for info in pkgutil.iter_modules(kdistill.sources.__path__):
        module = importlib.import_module(f"kdistill.sources.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and hasattr(cls, "collate") and hasattr(cls, "signal") \
                    and cls is not TeacherSource:
                found.add(cls)
    assert found == set(KINDS)


def test_what_each_kind_gives_for_rollouts_and_calibration(sources):
    rollout = {kind: sources[kind].rollout_model() for kind in KINDS}
    assert rollout[ModelSource] is sources[ModelSource].model and rollout[EmaSource] is sources[EmaSource].model
    assert rollout[CacheSource] is rollout[MultiSource] is rollout[CrossTokenizerSource] is None
    assert rollout[ServedSource] is None

    tok = tiny_tokenizer()
    ids = tok.encode("Once upon a time")
    examples = [{"ids": ids, "mask": [True] * len(ids), "teacher_ids": [5, 6, 7]}]
    plain = sources[ModelSource].calibration_batch(examples, tok.pad_token_id)
    assert torch.equal(plain["input_ids"], torch.tensor([ids[:-1]]))
    own = sources[CrossTokenizerSource].calibration_batch(examples, tok.pad_token_id)
    assert torch.equal(own["input_ids"], torch.tensor([[5, 6]]))  # the teacher's own tokens
