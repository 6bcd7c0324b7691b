"""Policy-gradient reverse KL (`reverse_kl_pg`): MiniLLM / on-policy distillation on sampled tokens.

The targets y are tokens sampled from the student (a rollout, `kdistill.data.rollout`). Per token the
reward is r_t = log p(y_t) - log q(y_t) (teacher p, student q, both at the term's temperature), and

    advantage  A_t = r_t + γ · F_{t+1},   F_{t+1} = Σ_{s>t} γ^{s-t-1} r_s  (÷ Σ_{s>t} γ^{s-t-1} when normalised)
    ratio      ρ_t = q(y_t) / μ(y_t)      μ: the distribution that sampled y_t, recorded at generation
    value      -ρ_t·A_t,   gradient  -ρ_t·A_t·∇log q(y_t)      (A and ρ are stop-gradient)

E_{y~μ}[ρ·(log q - log p)·∇log q] = Σ_y q(y)(log q(y) - log p(y))∇log q(y) = ∇KL(q ‖ p): the expected
gradient is the reverse KL's (tests/losses/test_policy.py checks it by exact enumeration). With γ = 1
and no normalisation it is the gradient of the sequence-level KL; γ = 0 (default) is the per-token
advantage of on-policy distillation. ρ corrects a reused (stale) rollout and MiniLLM's teacher-mixed
sampling (μ = α p + (1-α) q_old); it is 1 on tokens that were not sampled (plain data). A is clipped to
±advantage_clip, ρ to at most ratio_clip. The value is a per-token sample of the KL, so it may be < 0.

F needs the rewards of later tokens, which other chunks of the fused objective hold: `future_rewards`
computes them once per batch, without gradient, before the chunks (`prepare`), only when γ > 0.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from kdistill.base.errors import ConfigError
from kdistill.losses.signals import DenseSignal, fp32

KIND = "reverse_kl_pg"
# key -> default; booleans stay booleans, the rest are numbers
DEFAULTS = {"gamma": 0.0, "normalize": True, "advantage_clip": 10.0, "ratio_clip": 5.0}


def parse_params(spec: dict, key: str) -> dict:
    """The term's own keys, checked (ConfigError names `key.name`)."""
    params = dict(DEFAULTS)
    if "normalize" in spec:
        if not isinstance(spec["normalize"], bool):
            raise ConfigError(f"{key}.normalize: expected true or false, got {spec['normalize']!r}")
        params["normalize"] = spec["normalize"]
    bounds = {"gamma": (0.0, 1.0, "0 <= gamma <= 1"), "advantage_clip": (0.0, math.inf, "advantage_clip > 0"),
              "ratio_clip": (0.0, math.inf, "ratio_clip > 0")}
    for name, (low, high, rule) in bounds.items():
        if name not in spec:
            continue
        value = spec[name]
        try:
            x = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            x = math.nan
        if not (low <= x <= high) or (name != "gamma" and x == 0):
            raise ConfigError(f"{key}.{name}: must satisfy {rule}, got {value!r}")
        params[name] = x
    return params


def target_logprobs(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / T)[y]. Shapes: logits (N, V), targets (N,) -> (N,)"""
    logits = fp32(logits) if temperature == 1.0 else fp32(logits) / temperature
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def teacher_target_logprobs(teacher, targets: Tensor, temperature: float = 1.0,
                            vocab_size: int | None = None) -> Tensor:
    """log p_T(y) of a teacher signal's rows; -inf outside its support.

    Sparse: y among the K ids takes its log-probability, any other id an even share of the mass outside
    them (as held-out evaluation does); the K values and the shares are then tempered together.
    Shapes: teacher over (N,), targets (N,) -> (N,)
    """
    if isinstance(teacher, Tensor):
        teacher = DenseSignal(logits=teacher)
    if isinstance(teacher, DenseSignal):
        return target_logprobs(teacher.logits, targets, temperature)
    logprobs = fp32(teacher.logprobs)
    others = max(1, (vocab_size or teacher.k + 1) - teacher.k)  # ids outside the K
    rest = (1 - logprobs.exp().sum(-1)).clamp(min=1e-30)
    share = rest.log() - math.log(others)
    hit = teacher.ids == targets.unsqueeze(-1)
    lp = torch.where(hit.any(-1), torch.where(hit, logprobs, 0.0).sum(-1), share)
    if temperature == 1.0:
        return lp
    norm = torch.logaddexp((logprobs / temperature).logsumexp(-1), share / temperature + math.log(others))
    return lp / temperature - norm


def reverse_kl_pg(student_logits: Tensor, teacher, targets: Tensor, temperature: float = 1.0,
                  behaviour: Tensor | None = None, future: Tensor | None = None, gamma: float = 0.0,
                  normalize: bool = True, advantage_clip: float = 10.0, ratio_clip: float = 5.0) -> Tensor:
    """Per-token surrogate whose gradient is the policy gradient of KL(q ‖ p) (see the module docstring).

    behaviour: log μ(y) of each sampled token (NaN where not sampled); future: F_{t+1} from
    `future_rewards` (needed only when gamma > 0). `normalize` is used there, not here.
    Shapes: student_logits (N, V), teacher over (N,), targets (N,), behaviour (N,), future (N,) -> (N,)
    """
    lq = target_logprobs(student_logits, targets, temperature)
    lp = teacher_target_logprobs(teacher, targets, temperature, student_logits.shape[-1])
    advantage = (lp - lq).detach()
    if future is not None and gamma > 0:
        advantage = advantage + gamma * future
    advantage = advantage.nan_to_num(0.0).clamp(-advantage_clip, advantage_clip)  # -inf - -inf: no signal
    weight = -advantage
    if behaviour is not None:
        ratio = torch.where(torch.isnan(behaviour), 1.0, (lq.detach() - behaviour).exp()).clamp(max=ratio_clip)
        weight = ratio * weight
    return weight + weight * (lq - lq.detach())


def future_rewards(rewards: Tensor, mask: Tensor, gamma: float, normalize: bool = True) -> Tensor:
    """F_{t+1} = Σ_{s>t} γ^{k(s)-k(t)-1} r_s over the masked positions s after t in the same row (k: the
    index among the row's masked positions), ÷ Σ of the same weights when `normalize` (0 for the last).

    Shapes: rewards (B, T), mask (B, T) bool -> (B, T)
    """
    acc = torch.zeros(rewards.shape[0], dtype=torch.float64, device=rewards.device)
    weights = torch.zeros_like(acc)
    out = torch.zeros(rewards.shape, dtype=torch.float64, device=rewards.device)
    for t in range(rewards.shape[1] - 1, -1, -1):
        m = mask[:, t]
        now = acc / weights.clamp(min=1e-300) if normalize else acc
        out[:, t] = torch.where(m & (weights > 0), now, 0.0)
        acc = torch.where(m, rewards[:, t].double() + gamma * acc, acc)
        weights = torch.where(m, 1.0 + gamma * weights, weights)
    return out.to(rewards.dtype)


def head_logits(hidden: Tensor, head_weight: Tensor):
    """rows -> the student's logits there, without gradient. Shapes: hidden (B, T, D), head_weight (V, D)"""
    flat, w = hidden.detach().reshape(-1, hidden.shape[-1]), head_weight.detach()
    return lambda rows: flat.index_select(0, rows).to(w.dtype) @ w.T


def full_logits(student_logits: Tensor):
    """rows -> rows of full logits, without gradient. Shapes: student_logits (B, T, V)"""
    flat = student_logits.detach().reshape(-1, student_logits.shape[-1])
    return lambda rows: flat.index_select(0, rows)


@torch.no_grad()
def batch_rewards(logits_of, teacher, targets: Tensor, rows: Tensor, temperature: float,
                  chunk_size: int) -> Tensor:
    """r = log p(y) - log q(y) at `rows` of the flattened positions, a chunk of rows at a time;
    `logits_of(rows)` gives the student's logits (`head_logits`, `full_logits`).

    Shapes: teacher over (B, T), targets (B, T), rows (N,) -> (N,)
    """
    flat_targets, out = targets.reshape(-1), []
    for start in range(0, len(rows), chunk_size):
        r = rows[start:start + chunk_size]
        logits, y = logits_of(r), flat_targets[r]
        out.append(teacher_target_logprobs(teacher.take(r), y, temperature, logits.shape[-1])
                   - target_logprobs(logits, y, temperature))
    return torch.cat(out) if out else torch.zeros(0, device=targets.device)


def prepare(terms, logits_of, teacher, targets: Tensor, mask: Tensor, behaviour: Tensor | None,
            progress: float, chunk_size: int) -> dict[str, Tensor]:
    """Per-position inputs of the batch's policy terms, flattened: "behaviour" (log μ of sampled
    tokens) and "future/<term name>" for each term with γ > 0. Empty when there is no such term.

    Shapes: targets (B, T), mask (B, T), behaviour (B, T) or None -> dict of (B*T,)
    """
    policy = [t for t in terms if t.kind == KIND]
    if not policy:
        return {}
    extras = {} if behaviour is None else {"behaviour": behaviour.reshape(-1)}
    rows = mask.reshape(-1).nonzero().squeeze(-1)
    for term in policy:
        if term.params["gamma"] <= 0:
            continue
        temperature = float(term.temperature(progress))
        sampled = batch_rewards(logits_of, teacher, targets, rows, temperature, chunk_size)
        rewards = torch.zeros(mask.numel(), dtype=sampled.dtype, device=mask.device)
        rewards[rows] = sampled
        clip = term.params["advantage_clip"]
        rewards = torch.nan_to_num(rewards, nan=0.0, neginf=-clip, posinf=clip)
        future = future_rewards(rewards.view(mask.shape), mask, term.params["gamma"], term.params["normalize"])
        extras[f"future/{term.name}"] = future.reshape(-1)
    return extras


def term_value(term, student_logits: Tensor, teacher, targets: Tensor, temperature: float,
               extras: dict | None) -> Tensor:
    """The objective's entry point: `reverse_kl_pg` with the term's parameters and the rows' extras.

    Shapes: student_logits (N, V), teacher over (N,), targets (N,), extras of (N,) -> (N,)
    """
    if targets is None:
        raise ValueError(f"loss term {term.name!r} ({KIND}) needs the sampled tokens as targets")
    if isinstance(temperature, Tensor):
        raise ValueError(f"loss term {term.name!r} ({KIND}) takes a number or schedule as temperature")
    extras = extras or {}
    p = term.params
    return reverse_kl_pg(student_logits, teacher, targets, temperature, extras.get("behaviour"),
                         extras.get(f"future/{term.name}"), p["gamma"], p["normalize"], p["advantage_clip"],
                         p["ratio_clip"])
