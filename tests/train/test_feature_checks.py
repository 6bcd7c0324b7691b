"""Bad feature-term inputs are refused before any folder is made or any model loads, naming key and fix."""
import pytest
from helpers import save_tiny_teacher

from kdistill.base.errors import ConfigError, ModelError
from kdistill.config.schema import load_config
from kdistill.losses import build_objective
from kdistill.run.distill import distill
from kdistill.train.features import plan


def _refused(tmp_path, monkeypatch, overrides, message):
    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the refusal")

    monkeypatch.setattr("kdistill.sources.model.load_teacher", no_model)
    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", "student.num_layers=1", *overrides])
    with pytest.raises(ConfigError) as err:
        distill(cfg)
    assert message in str(err.value)
    assert not (tmp_path / "run").exists()
    return str(err.value)


def test_a_hidden_term_with_a_cached_teacher(tmp_path, monkeypatch, teacher_dir):
    text = _refused(tmp_path, monkeypatch, [f"teacher.model={teacher_dir}", f"teacher.cache={tmp_path / 'cache'}",
                                            "loss.terms=[{kind: forward_kl}, {kind: hidden_mse}]"],
                    "loss.terms[1] (hidden_mse) compares the teacher's hidden states")
    assert "holds only the teacher's output signal" in text and "drop teacher.cache" in text


def test_a_cache_among_several_teachers_and_route_are_refused(tmp_path, monkeypatch, teacher_dir):
    """Several teachers and fsdp take feature terms (tests/train/test_features_teachers.py); a cache entry
    has no activations and route scores each example by one teacher."""
    sources = f"teacher.sources=[{{name: a, model: {teacher_dir}}}, {{name: big, cache: {tmp_path / 'c'}}}]"
    text = _refused(tmp_path, monkeypatch, [sources, "loss.terms=[{kind: hidden_cosine}]"],
                    "loss.terms[0] (hidden_cosine) compares every teacher's hidden states")
    assert "teacher.sources[1] (big, cache" in text and "`model:` instead of the cache" in text
    two = f"teacher.sources=[{{name: a, model: {teacher_dir}}}, {{name: b, model: {teacher_dir}}}]"
    _refused(tmp_path, monkeypatch, [two, "teacher.combine=route", "teacher.route_key=who",
                                     f"data.path={tmp_path / 'd.jsonl'}", "loss.terms=[{kind: attention_output}]"],
             "use teacher.combine=sum")


def test_from_init_against_a_teacher_the_student_was_not_copied_from(tmp_path, monkeypatch, teacher_dir):
    two = f"teacher.sources=[{{name: a, model: {teacher_dir}}}, {{name: b, model: {teacher_dir}}}]"
    text = _refused(tmp_path, monkeypatch, [two, "loss.terms=[{kind: hidden_mse, pairs: from_init}]"],
                    "loss.terms[0].pairs=from_init pairs the student's layers with the teacher they were copied "
                    "from, a")
    assert "not teacher.sources[1] (b)" in text and "use pairs: uniform or cka" in text
    _refused(tmp_path, monkeypatch, [f"teacher.sources=[{{name: a, model: {teacher_dir}}}, {{name: e, kind: ema}}]",
                                     "loss.terms=[{kind: hidden_mse, pairs: [[0, 5]]}]"],
             "loss.terms[0].pairs (teacher.sources a): pair [0, 5] names a layer that does not exist")


def test_a_pair_naming_a_missing_layer(tmp_path, monkeypatch, teacher_dir):
    text = _refused(tmp_path, monkeypatch, [f"teacher.model={teacher_dir}",
                                            "loss.terms=[{kind: forward_kl}, {kind: hidden_mse, pairs: [[0, 5]]}]"],
                    "loss.terms[1].pairs: pair [0, 5] names a layer that does not exist")
    assert "the student has 1 layers (0..0), the teacher 2 (0..1)" in text


def test_attention_map_on_a_teacher_whose_attention_cannot_be_recomputed(tmp_path, monkeypatch):
    gpt2 = save_tiny_teacher(tmp_path / "gpt2", arch="gpt2")
    text = _refused(tmp_path, monkeypatch, [f"teacher.model={gpt2}", "loss.terms=[{kind: attention_map}]"],
                    "loss.terms[0] (attention_map) recomputes attention probabilities from q_proj")
    assert "(gpt2)" in text and "use kind: attention_output" in text


@pytest.mark.parametrize("term,message", [
    ({"kind": "hidden_mse", "pairs": "cak"}, "loss.terms[0].pairs: 'cak' is not a pairing"),
    ({"kind": "hidden_mse", "pairs": [[0, 1], [0, 2]]}, "student layer 0 appears in two pairs"),
    ({"kind": "hidden_mse", "pairs": [[0, -1]]}, "pairs of whole numbers >= 0"),
    ({"kind": "hidden_mse", "target": "raw"}, "loss.terms[0].target: 'raw' is not a target"),
    ({"kind": "attention_map", "target": "normed"}, "loss.terms[0].target: unknown key"),
    ({"kind": "attention_map", "rows": 0}, "loss.terms[0].rows: expected a whole number >= 1"),
    ({"kind": "hiden_cosine"}, "did you mean 'hidden_cosine'?"),
])
def test_term_keys_are_checked(term, message):
    with pytest.raises(ConfigError) as err:
        build_objective([term])
    assert message in str(err.value)


def test_from_init_needs_a_student_made_of_teacher_layers():
    from helpers import tiny_llama

    objective = build_objective([{"kind": "hidden_mse", "pairs": "from_init"}])
    with pytest.raises(ConfigError, match=r"loss\.terms\[0\]\.pairs=from_init: the student was not initialised"):
        plan(objective, tiny_llama(300), tiny_llama(300), {"layers": "random (student.init=random)"}, None)


def test_attention_map_on_a_block_without_llama_attention_names_the_layer(tmp_path):
    from helpers import tiny_llama, tiny_teacher

    objective = build_objective([{"kind": "attention_map", "pairs": [[0, 1]]}])
    with pytest.raises(ModelError, match=r"loss\.terms\[0\] \(attention_map\): teacher layer 1: GPT2Block"):
        plan(objective, tiny_llama(300), tiny_teacher("gpt2", 300), None, None)
