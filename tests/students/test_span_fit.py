"""Span fit: each copied layer learns the stream at the end of the span it stands for; the fitted student
is closer to its teacher on rows it never saw, the fit touches only the decoder blocks and final norm,
and `kdistill distill` runs it before the repair (or says why not, for a pruned student)."""
import pytest
import torch

from kdistill.models.heads import decoder
from kdistill.students.layer_map import span_pairs
from kdistill.students.span_fit import fit_spans, span_targets
from tests.students.copies import heldout_kl, rows, teacher_and_copy

KEEP = (0, 3)


def test_span_pairs_end_each_block_where_the_next_kept_layer_starts():
    assert span_pairs([0, 1, 2, 8, 11, 24, 27, 29], 30) == [(0, 0), (1, 1), (2, 7), (3, 10), (4, 23), (5, 26),
                                                            (6, 28), (7, 29)]
    assert span_pairs([4], 6) == [(0, 5)]


def test_targets_are_the_teachers_stream_as_the_next_kept_layer_reads_it():
    teacher, _ = teacher_and_copy(KEEP)
    batch = rows(5, b=3, t=11)
    targets = span_targets(teacher, batch, span_pairs(list(KEEP), 6))
    with torch.no_grad():
        hidden = teacher(**{k: batch[k] for k in ("input_ids", "attention_mask")}, output_hidden_states=True)
        # hidden_states[i] enters layer i; layer 3 (the next kept one) reads norm_3(hidden_states[3])
        entering = decoder(teacher).layers[3].input_layernorm(hidden.hidden_states[3])
    real = batch["attention_mask"].bool()
    assert set(targets) == {2, 5} and targets[2].dtype == torch.bfloat16
    torch.testing.assert_close(targets[2].float(), entering[real], rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(targets[5].float(), hidden.hidden_states[-1][real], rtol=1e-2, atol=1e-2)


def test_fitted_student_starts_closer_on_heldout_rows_and_keeps_its_embeddings():
    teacher, student = teacher_and_copy(KEEP)
    calib, held = rows(0, b=12), rows(1)
    plain = heldout_kl(student, teacher, held)
    embeddings = student.get_input_embeddings().weight.detach().clone()
    report = fit_spans(student, teacher, calib, list(KEEP), steps=40, lr=3e-3, rows_per_step=4)
    assert report["loss_last"] < 0.5 * report["loss_first"]
    assert report["pairs"] == [[0, 2], [1, 5]]
    assert heldout_kl(student, teacher, held) < 0.8 * plain
    assert torch.equal(student.get_input_embeddings().weight, embeddings)
    assert all(p.requires_grad and p.grad is None for p in student.parameters())


def test_no_steps_changes_nothing():
    teacher, student = teacher_and_copy(KEEP)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    report = fit_spans(student, teacher, rows(3), list(KEEP), steps=0)
    assert report["steps"] == 0 and all(torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_loss_is_the_plain_mean_over_blocks_of_relative_errors():
    """Through the hooks, the loss equals the same thing written with output_hidden_states."""
    from kdistill.students.span_fit import span_loss

    teacher, student = teacher_and_copy(KEEP)
    batch = rows(6, b=3, t=9)
    pairs = span_pairs(list(KEEP), 6)
    targets = span_targets(teacher, batch, pairs)
    energy = {t: float(v.float().pow(2).sum(-1).mean()) for t, v in targets.items()}
    fast = span_loss(student, batch, targets, pairs, energy)
    real = batch["attention_mask"].bool()
    out = student(**{k: batch[k] for k in ("input_ids", "attention_mask")}, output_hidden_states=True)
    mine = [decoder(student).layers[1].input_layernorm(out.hidden_states[1]), out.hidden_states[-1]]
    plain = sum((m[real] - targets[t].float()).pow(2).sum(-1).mean() / energy[t]
                for m, (_, t) in zip(mine, pairs)) / 2
    assert fast.item() == pytest.approx(plain.item(), rel=1e-5)
