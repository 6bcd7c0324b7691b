"""The default objective's chunk loss and its gradient in closed form, without autograd.

For forward KL at temperature T and cross-entropy (label smoothing ε) on dense teacher logits, the
gradient with respect to the student's logits s of one chunk is known:

    d KL(p_T ‖ q_T) / ds = (q_T - p_T) / T,          q_T = softmax(s / T), p_T = softmax(t / T)
    d CE_ε / ds          = (q_T - (1-ε)·onehot(y) - ε/V) / T

so a chunk costs a few passes over its (rows × V) block instead of autograd's graph of log-softmaxes,
and one exp per distribution: exp((s - max s)/T) gives both the logsumexp and the gradient.
The passes run one tile of rows at a time (`TILE_ELEMENTS`, a few MB: the tile's temporaries stay in
cache while the chunk, sized for the matmuls, does not) and the gradient overwrites the chunk's logits,
so a chunk holds two (rows × V) blocks, the student's and the teacher's (`LIVE_TENSORS`).
A teacher id with a -inf logit is outside its support: as in the general path (losses/signals.py), the KL
drops it from both distributions (the student renormalised over the support), CE does not.
On CPU, a chunk of fp32 logits with at most one KL and one CE term goes through one compiled C kernel
instead (native.py, native_kernel.c: three passes a row, every exp once, the row's temporaries in L2),
built with the system C compiler on first use; without a compiler, or with KDISTILL_NATIVE=0, the torch
passes below run. `kdistill bench loss` measures both against the autograd path; tests/losses/fused/test_closed_form.py proves
values, logged terms and gradients equal to it. Every other objective (other divergences, sparse or
mixed teachers, per-token weights or temperatures, rollout terms) takes the general path in `losses/objective.py`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from kdistill.losses.fused import native
from kdistill.losses.reduction import reduce_tokens
from kdistill.losses.schedules import EntropyTemperature
from kdistill.losses.signals import NEG, DenseSignal

KINDS = ("forward_kl", "ce")
# elements of one tile's (rows x V) temporaries: 1M fp32 = 4 MiB each, about five alive (the student at
# each temperature, the teacher's p, p's log-ratio), so they stay in a 32 MiB L3; `kdistill bench loss`
# with 2^18..2^22 on V = 49152 was fastest around 2^20
TILE_ELEMENTS = 1 << 20
# (rows x V) blocks alive per chunk: the student's logits (which become their gradient) and the teacher's,
# plus one for the tiles and the matmul's output conversion
LIVE_TENSORS = 3


def eligible(terms, teacher, extras: dict) -> bool:
    """True when every term has the closed form and nothing per token changes it."""
    if extras or not (teacher is None or isinstance(teacher, DenseSignal)):
        return False
    return all(t.kind in KINDS and not t.params and not isinstance(t.temperature, EntropyTemperature)
               for t in terms)


def tile_rows(vocab_size: int, device: torch.device) -> int:
    """Rows of one tile of a chunk's elementwise passes: a CPU cache's worth; on an accelerator the
    whole chunk (big kernels, and no host sync per tile)."""
    if device.type != "cpu":
        return 1 << 62
    return max(1, TILE_ELEMENTS // max(1, vocab_size))


def chunk_loss_and_grad(terms, t2_scale: bool, logits: Tensor, teacher: DenseSignal | None,
                        targets: Tensor | None, num_tokens, progress: float,
                        logs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(loss, d loss / d logits) of one chunk, adding each term's value into `logs` as `rows_loss`
    does. The gradient is written over `logits` (the caller's own chunk, not needed after) and returned.

    Shapes: logits (R, V) fp32 or fp64, teacher logits (R, V), targets (R,) -> (), (R, V)"""
    s = logits.detach()
    t = teacher.logits if teacher is not None and any(term.kind != "ce" for term in terms) else None
    count = reduce_tokens(torch.ones((), dtype=s.dtype, device=s.device), None, num_tokens)  # 1 / global tokens
    plan = []  # (term, temperature, gradient coefficient c before 1/count)
    for term in terms:
        temperature = float(term.temperature(progress))
        scale = temperature ** 2 if t2_scale and term.kind != "ce" else 1.0
        plan.append((term, temperature, term.weight(progress) * scale / temperature))
    kernel = native_kernel(plan, s)
    if kernel is not None:
        return _native_chunk(kernel, plan, s, t, targets, count, logs, num_tokens)
    student_coefficient: dict[float, float] = {}  # T -> coefficient of q_T in the gradient
    for _term, temperature, c in plan:
        student_coefficient[temperature] = student_coefficient.get(temperature, 0.0) + c
    shift = sum(c * term.label_smoothing / s.shape[-1] for term, _, c in plan if term.kind == "ce")
    values = {term.name: torch.zeros((), dtype=s.dtype, device=s.device) for term, _, _ in plan}
    loss = torch.zeros((), dtype=s.dtype, device=s.device)
    step = tile_rows(s.shape[-1], s.device)
    for start in range(0, s.shape[0], step):
        rows = slice(start, start + step)
        s_tile = s[rows]
        gap = None  # where the tile's teacher is outside its support (-inf), if anywhere
        if t is not None:
            outside = torch.isneginf(t[rows])
            gap = outside if bool(outside.any()) else None
        # one exp per distribution: e = exp(d), d = (s - max s) / T; q_T = e / S, log q_T = d - log S,
        # so the logsumexp and the gradient share it (max(s / T) = max(s) / T for T > 0)
        top = s_tile.amax(-1, keepdim=True)
        student = {}  # T -> (d, e, S)
        for temperature in student_coefficient:
            d = torch.sub(s_tile, top)
            if temperature != 1.0:
                d.mul_(1.0 / temperature)
            e = d.exp()
            student[temperature] = (d, e, e.sum(-1, keepdim=True))
        coefficient = dict(student_coefficient)  # of q_T over the whole vocabulary, in this tile
        weights = []  # (e, per-row coefficient before 1/count): the gradient is sum e * coefficient
        for term, temperature, c in plan:
            d, e, total = student[temperature]
            log_total = total.log()
            if term.kind == "ce":
                eps = term.label_smoothing
                picked = s_tile.gather(-1, targets[rows].unsqueeze(-1)).sub_(top).mul_(1.0 / temperature)
                row_values = (log_total - picked).squeeze(-1)  # lse - z_y
                if eps:
                    mean = d.mean(-1, keepdim=True)
                    row_values = (1 - eps) * row_values + eps * (log_total - mean).squeeze(-1)
            else:
                u = t[rows].to(s.dtype)
                du = torch.sub(u, u.amax(-1, keepdim=True))
                if temperature != 1.0:
                    du.mul_(1.0 / temperature)
                if gap is not None:  # both distributions drop those ids (signals.py's support rule)
                    du.masked_fill_(gap, NEG)
                    e_support = e.masked_fill(gap, 0.0)
                    total_support = e_support.sum(-1, keepdim=True)
                    log_total = total_support.log()
                    coefficient[temperature] -= c
                    weights.append((e_support, c / total_support))
                eu = du.exp()
                teacher_total = eu.sum(-1, keepdim=True)
                weights.append((eu, -c / teacher_total))
                # sum p (log p - log q) = sum eu (du - d) / S_u - log S_u + log S, since sum p = 1
                row_values = (du.sub_(d).mul_(eu).sum(-1, keepdim=True) / teacher_total
                              - teacher_total.log() + log_total).squeeze(-1)
            value = row_values.sum()
            values[term.name] += value
            loss += c * temperature * value
        for temperature, c in coefficient.items():
            weights.append((student[temperature][1], c / student[temperature][2]))
        # the gradient goes over s_tile, whose values were last needed above
        grad = None
        for e, k in weights:
            if grad is None:
                grad = torch.mul(e, k * count, out=s_tile)
            else:
                grad.addcmul_(e, k * count)
        for term, _, c in plan:
            if term.kind == "ce":
                grad.scatter_add_(-1, targets[rows].unsqueeze(-1),
                                  (-c * (1 - term.label_smoothing) * count).expand(grad.shape[0], 1)
                                  .to(s.dtype))
        if shift:
            grad.sub_(shift * count)
    for name, value in values.items():
        logs[name] = logs[name] + reduce_tokens(value, None, num_tokens)
    return loss * count, s


def native_kernel(plan, s: Tensor):
    """The compiled kernel (native.py) where it takes this chunk: CPU, fp32 logits with unit stride, at
    most one forward-KL and one CE term; else None (the torch passes above)."""
    kinds = [term.kind for term, _, _ in plan]
    if (s.device.type != "cpu" or s.dtype != torch.float32 or s.stride(-1) != 1 or s.dim() != 2
            or kinds.count("forward_kl") > 1 or kinds.count("ce") > 1):
        return None
    return native.load()


def _native_chunk(kernel, plan, s: Tensor, t: Tensor | None, targets: Tensor | None, count: Tensor,
                  logs: dict[str, Tensor], num_tokens) -> tuple[Tensor, Tensor]:
    """chunk_loss_and_grad through the compiled kernel: the same values, logs and gradient."""
    scale = float(count)
    kl_term = next(((term, temperature, c) for term, temperature, c in plan if term.kind != "ce"), None)
    ce_term = next(((term, temperature, c) for term, temperature, c in plan if term.kind == "ce"), None)
    if t is not None:  # None without a KL term
        t = t.to(torch.float32)
        t = t if t.stride(-1) == 1 else t.contiguous()
    y = targets.to(torch.int64).contiguous() if ce_term is not None else None
    kl_rows, ce_rows = native.chunk(
        kernel, s, t, y,
        1.0 / kl_term[1] if kl_term else 1.0, 1.0 / ce_term[1] if ce_term else 1.0,
        kl_term[2] * scale if kl_term else 0.0, ce_term[2] * scale if ce_term else 0.0,
        float(ce_term[0].label_smoothing) if ce_term else 0.0)
    loss = 0.0
    for found, rows in ((kl_term, kl_rows), (ce_term, ce_rows)):
        if found is None:
            continue
        term, temperature, c = found
        value = rows.sum()
        loss += c * temperature * float(value)
        logs[term.name] = logs[term.name] + reduce_tokens(value.to(s.dtype), None, num_tokens)
    return torch.tensor(loss * scale, dtype=s.dtype), s
