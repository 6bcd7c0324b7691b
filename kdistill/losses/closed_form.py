"""The default objective's chunk loss and its gradient in closed form, without autograd.

For forward KL at temperature T and cross-entropy (label smoothing ε) on dense teacher logits, the
gradient with respect to the student's logits s of one chunk is known:

    d KL(p_T ‖ q_T) / ds = (q_T - p_T) / T,          q_T = softmax(s / T), p_T = softmax(t / T)
    d CE_ε / ds          = (q_T - (1-ε)·onehot(y) - ε/V) / T

so a chunk costs a few passes over its (rows × V) block instead of autograd's graph of log-softmaxes
(`kdistill bench loss` measures both; tests/losses/test_closed_form.py proves values, logged terms and
gradients equal to the autograd path). Every other objective (other divergences, sparse or mixed
teachers, per-token weights or temperatures, rollout terms), and a chunk whose teacher has ids outside
its support (-inf logits), takes the general path in `objective.py`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from kdistill.losses.reduction import reduce_tokens
from kdistill.losses.schedules import EntropyTemperature
from kdistill.losses.signals import DenseSignal

KINDS = ("forward_kl", "ce")


def eligible(terms, teacher, extras: dict) -> bool:
    """True when every term has the closed form and nothing per token changes it."""
    if extras or not (teacher is None or isinstance(teacher, DenseSignal)):
        return False
    return all(t.kind in KINDS and not t.params and not isinstance(t.temperature, EntropyTemperature)
               for t in terms)


def chunk_loss_and_grad(terms, t2_scale: bool, logits: Tensor, teacher: DenseSignal | None,
                        targets: Tensor | None, num_tokens, progress: float,
                        logs: dict[str, Tensor]) -> tuple[Tensor, Tensor] | None:
    """(loss, d loss / d logits) of one chunk, adding each term's value into `logs` as `rows_loss`
    does; None when the teacher has ids outside its support (the general path handles those).

    Shapes: logits (R, V) fp32 or fp64, teacher logits (R, V), targets (R,) -> (), (R, V)"""
    s = logits.detach()
    t = None
    if teacher is not None and any(term.kind != "ce" for term in terms):
        t = teacher.logits.to(s.dtype)
        if torch.isneginf(t).any():
            return None
    count = reduce_tokens(torch.ones((), dtype=s.dtype, device=s.device), None, num_tokens)  # 1 / global tokens
    student_at: dict[float, list] = {}  # T -> [s / T, lse, q, coefficient of q in the gradient]

    def student(temperature: float):
        if temperature not in student_at:
            z = s if temperature == 1.0 else s / temperature
            lse = z.logsumexp(-1, keepdim=True)
            student_at[temperature] = [z, lse, (z - lse).exp_(), 0.0]
        return student_at[temperature]

    loss = torch.zeros((), dtype=s.dtype, device=s.device)
    minus = []  # (tensor, coefficient) taken from the gradient: each KL term's p
    scatters = []  # (coefficient) of -onehot(y) for each CE term
    shift = 0.0  # a constant taken from every entry (label smoothing's ε / V)
    for term in terms:
        temperature = float(term.temperature(progress))
        entry = student(temperature)
        z, lse = entry[0], entry[1]
        scale = temperature ** 2 if t2_scale and term.kind != "ce" else 1.0
        c = term.weight(progress) * scale / temperature  # the term's gradient coefficient, before 1/count
        entry[3] += c
        if term.kind == "ce":
            eps = term.label_smoothing
            values = (lse - z.gather(-1, targets.unsqueeze(-1))).squeeze(-1)
            if eps:
                values = (1 - eps) * values + eps * (lse.squeeze(-1) - z.mean(-1))
                shift += c * eps / s.shape[-1]
            scatters.append(c * (1 - eps))
        else:
            u = t if temperature == 1.0 else t / temperature
            log_p = u - u.logsumexp(-1, keepdim=True)
            p = log_p.exp()
            # Σ p (log p - log q) = Σ p (log p - z) + lse, since Σ p = 1
            values = log_p.sub_(z).mul_(p).sum(-1) + lse.squeeze(-1)
            del log_p
            minus.append((p, c))
        value = values.sum()
        logs[term.name] = logs[term.name] + reduce_tokens(value, None, num_tokens)
        loss = loss + c * temperature * value
    grad = None
    for _z, _lse, q, coefficient in student_at.values():  # q is not needed after this: scaled in place
        grad = q.mul_(coefficient) if grad is None else grad.add_(q, alpha=coefficient)
    for p, c in minus:
        grad.sub_(p, alpha=c)
    for c in scatters:
        grad.scatter_add_(-1, targets.unsqueeze(-1), torch.full((s.shape[0], 1), -c, dtype=s.dtype, device=s.device))
    if shift:
        grad.sub_(shift)
    return loss * count, grad.mul_(count)
