"""Plain float64 reference formulas and inputs shared by the loss tests."""
import torch
import torch.nn.functional as F

from kdistill.losses import divergences as D

NAMES = list(D.DIVERGENCES)
PARAMS = {"bidirectional_kl": {"forward_weight": 0.3, "reverse_weight": 0.7}, "jsd": {"beta": 0.3},
          "skew_forward_kl": {"alpha": 0.2}, "skew_reverse_kl": {"alpha": 0.2}}


def reference(name, student_logits, teacher_logits, temperature=1.0, **kw):
    """The textbook formula on probabilities, no tricks. Shapes: (..., V), (..., V) -> (...)"""
    p, q = F.softmax(teacher_logits / temperature, -1), F.softmax(student_logits / temperature, -1)

    def kl(a, b):
        return (a * (a.log() - b.log())).sum(-1)

    if name == "forward_kl":
        return kl(p, q)
    if name == "reverse_kl":
        return kl(q, p)
    if name == "bidirectional_kl":
        return kw["forward_weight"] * kl(p, q) + kw["reverse_weight"] * kl(q, p)
    if name == "jsd":
        m = kw["beta"] * p + (1 - kw["beta"]) * q
        return kw["beta"] * kl(p, m) + (1 - kw["beta"]) * kl(q, m)
    if name == "skew_forward_kl":
        return kl(p, kw["alpha"] * p + (1 - kw["alpha"]) * q)
    if name == "skew_reverse_kl":
        return kl(q, kw["alpha"] * q + (1 - kw["alpha"]) * p)
    return 0.5 * (p - q).abs().sum(-1)


def logits(*shape, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale)
