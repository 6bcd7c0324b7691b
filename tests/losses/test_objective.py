"""build_objective: config validation with key paths, weighting, T² option, schedules, logged terms."""
import pytest
import torch

from kdistill.base.errors import ConfigError
from kdistill.losses import DenseSignal, SparseSignal, build_objective
from kdistill.losses import divergences as D
from kdistill.losses.schedules import EntropyTemperature


def batch(seed=0, V=23):
    g = torch.Generator().manual_seed(seed)
    student, teacher = torch.randn(2, 5, V, generator=g) * 2, torch.randn(2, 5, V, generator=g) * 2
    targets, mask = torch.randint(0, V, (2, 5), generator=g), torch.rand(2, 5, generator=g) > 0.3
    return student, teacher, targets, mask


@pytest.mark.parametrize("terms,message", [
    ([{"kind": "forwrd_kl"}], "loss.terms[0].kind: unknown divergence 'forwrd_kl'; did you mean 'forward_kl'?"),
    ([{"kind": "ce"}, {"kind": "jsd", "bta": 0.5}], "loss.terms[1].bta: unknown key; did you mean 'beta'?"),
    ([{"kind": "jsd", "beta": 1.0}], "loss.terms[0].beta: must satisfy 0.0 < beta < 1.0, got 1.0; for the "
                                     "endpoints use kind 'forward_kl' (beta 0) or 'reverse_kl' (beta 1)"),
    ([{"kind": "skew_forward_kl", "alpha": 1}], "loss.terms[0].alpha: must satisfy 0.0 <= alpha < 1.0"),
    ([{"kind": "forward_kl", "temperature": 0}], "loss.terms[0].temperature: must satisfy 0.0 < temperature"),
    ([{"kind": "ce", "temperature": {"schedule": "entropy", "confident": 2, "uncertain": 1}}],
     "loss.terms[0].temperature.schedule: unknown schedule 'entropy'"),
    ([{"kind": "ce", "beta": 0.5}], "loss.terms[0].beta: unknown key"),
    ([{"kind": "reverse_kl", "missing_mass": "residul"}], "did you mean 'residual'?"),
    ([{"kind": "selective", "divergence": "tvdd"}], "loss.terms[0].divergence: unknown divergence 'tvdd'"),
    ([{"kind": "selective", "top_k": 0}], "loss.terms[0].top_k: expected a whole number >= 1"),
    ([{"kind": "ce", "label_smoothing": 1.0}], "loss.terms[0].label_smoothing"),
    ([{"weight": 1.0}], "loss.terms[0].kind: missing; expected one of forward_kl, "),
    ([{"kind": "ce", "name": "x"}, {"kind": "tvd", "name": "x"}], "loss.terms[1].name: 'x' is used"),
    ([], "loss.terms: expected a non-empty list"),
    (["ce"], "loss.terms[0]: expected a mapping"),
])
def test_config_errors_name_the_key_path(terms, message):
    with pytest.raises(ConfigError) as err:
        build_objective(terms)
    assert message in str(err.value)


def test_other_build_options_are_validated():
    for kwargs, message in [({"chunk_size": 0}, "loss.chunk_size"), ({"t2_scale": "yes"}, "loss.t2_scale"),
                            ({"memory_budget_mb": -1}, "loss.memory_budget_mb")]:
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            build_objective([{"kind": "ce"}], **kwargs)
    with pytest.raises(ConfigError, match=r"^distill\.loss\.terms\[0\]\.kind"):
        build_objective([{"kind": "kl"}], key="distill.loss")


def test_names_kinds_and_needs():
    objective = build_objective([{"kind": "forward_kl"}, {"kind": "forward_kl", "temperature": 4},
                                 {"kind": "ce"}, {"kind": "tvd", "name": "tv"}])
    assert [t.name for t in objective.terms] == ["forward_kl_0", "forward_kl_1", "ce", "tv"]
    assert objective.kinds == ("forward_kl", "forward_kl", "ce", "tvd")
    assert objective.needs_ce_targets and objective.needs_teacher
    assert not build_objective([{"kind": "ce"}]).needs_teacher


def test_weighted_sum_with_t2_scale_and_logged_unweighted_terms():
    student, teacher, targets, mask = batch()
    n = int(mask.sum())
    spec = [{"kind": "forward_kl", "weight": 0.5, "temperature": 2.0},
            {"kind": "jsd", "weight": {"schedule": "linear", "start": 1.0, "end": 0.0}, "beta": 0.2},
            {"kind": "ce", "weight": 0.25, "label_smoothing": 0.1, "temperature": 3.0}]
    fkl = D.forward_kl(student, teacher, 2.0)[mask].sum() / n
    jsd = D.jsd(student, teacher, 1.0, beta=0.2)[mask].sum() / n
    ce = D.cross_entropy(student, targets, 3.0, 0.1)[mask].sum() / n
    for t2, factor in ((True, 4.0), (False, 1.0)):
        out = build_objective(spec, t2_scale=t2).from_logits(student, DenseSignal(logits=teacher), targets, mask, n,
                                                             progress=0.25)
        torch.testing.assert_close(out.loss, 0.5 * factor * fkl + 0.75 * jsd + 0.25 * ce)  # no T² on ce
        assert out.terms == pytest.approx({"forward_kl": fkl.item(), "jsd": jsd.item(), "ce": ce.item()})


def test_entropy_temperature_term_is_per_token():
    student, teacher, targets, mask = batch()
    rule = {"schedule": "entropy", "confident": 3.0, "uncertain": 1.0}
    out = build_objective([{"kind": "reverse_kl", "temperature": rule}]).from_logits(
        student, DenseSignal(logits=teacher), targets, mask, 10)
    temps = EntropyTemperature(3.0, 1.0)(DenseSignal(logits=teacher))
    per_token = D.reverse_kl(student, teacher, temps) * temps ** 2
    torch.testing.assert_close(out.loss, per_token[mask].sum() / 10)


def test_schedule_values_for_logging():
    objective = build_objective([{"kind": "forward_kl", "temperature": {"schedule": "cosine", "start": 4, "end": 1}}])
    assert objective.schedule_values(1.0) == pytest.approx({"weight/forward_kl": 1.0, "temperature/forward_kl": 1.0})


def test_call_errors_for_missing_inputs():
    hidden, weight = torch.randn(1, 2, 4), torch.randn(7, 4)
    mask = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="need a teacher"):
        build_objective([{"kind": "tvd"}])(hidden, weight, None, None, mask, 2)
    with pytest.raises(ValueError, match="needs targets"):
        build_objective([{"kind": "ce"}])(hidden, weight, None, None, mask, 2)
    with pytest.raises(ValueError, match="vocabulary 8 != student vocabulary 7"):
        build_objective([{"kind": "tvd"}])(hidden, weight, DenseSignal(logits=torch.zeros(1, 2, 8)), None, mask, 2)


def test_sparse_teacher_through_the_objective():
    student, teacher, targets, mask = batch()
    signal = SparseSignal.from_logits(teacher, 5)
    out = build_objective([{"kind": "skew_reverse_kl", "missing_mass": "residual", "alpha": 0.3}]).from_logits(
        student, signal, targets, mask, 7)
    expected = D.divergence("skew_reverse_kl", student, signal, 1.0, "residual", alpha=0.3)[mask].sum() / 7
    torch.testing.assert_close(out.loss, expected)


def test_tiny_llama_student_with_tied_head_matches_full_logits():
    from helpers import tiny_llama

    student, teacher = tiny_llama(67, seed=0), tiny_llama(67, seed=1)
    ids = torch.randint(0, 67, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 5:] = False
    with torch.no_grad():
        t_hidden = teacher.model(input_ids=ids).last_hidden_state[:, :-1]
    signal = DenseSignal.from_hidden(t_hidden, teacher.lm_head.weight)
    objective = build_objective([{"kind": "forward_kl", "temperature": 2.0}, {"kind": "ce", "weight": 0.5}],
                                chunk_size=5)
    grads = []
    for fused in (True, False):
        student.zero_grad()
        hidden = student.model(input_ids=ids).last_hidden_state[:, :-1]
        if fused:
            out = objective(hidden, student.lm_head.weight, signal, ids[:, 1:], mask, int(mask.sum()))
        else:
            out = objective.from_logits(student.lm_head(hidden), signal, ids[:, 1:], mask, int(mask.sum()))
        out.loss.backward()
        grads.append([p.grad.clone() for p in student.parameters()])
    for fused_grad, plain_grad in zip(*grads):
        torch.testing.assert_close(fused_grad, plain_grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("ce_temperature", [1.0, 2.0])
def test_terms_sharing_the_student_normaliser_equal_each_term_alone(ce_temperature):
    """CE and a residual sparse KD term share one logsumexp per chunk; the sum is still each term's own."""
    student, teacher, targets, mask = batch(4, V=41)
    signal = SparseSignal.from_logits(teacher, 6)
    kd = {"kind": "forward_kl", "weight": 1.0, "temperature": 1.5, "missing_mass": "residual"}
    ce = {"kind": "ce", "weight": 0.3, "label_smoothing": 0.1, "temperature": ce_temperature}
    n = int(mask.sum())

    def loss_and_grad(terms):
        logits = student.clone().requires_grad_()
        out = build_objective(terms).from_logits(logits, signal, targets, mask, n)
        return out, torch.autograd.grad(out.loss, logits)[0]

    both, grad_both = loss_and_grad([kd, ce])
    (kd_alone, grad_kd), (ce_alone, grad_ce) = loss_and_grad([kd]), loss_and_grad([ce])
    torch.testing.assert_close(both.loss, kd_alone.loss + ce_alone.loss)
    torch.testing.assert_close(grad_both, grad_kd + grad_ce)
    assert both.terms == pytest.approx({**kd_alone.terms, **ce_alone.terms})
