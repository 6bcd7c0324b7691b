"""Per-token loss weights (rationale vs answer, the guide's ReasoningDistillationLoss): the fused chunked
objective equals a plain weighted reference, and a weight of 2 is the token counted twice."""
import torch

from kdistill.losses import DenseSignal, build_objective


def test_weighted_tokens_equal_the_plain_weighted_sum():
    g = torch.Generator().manual_seed(0)
    B, T, D, V = 2, 7, 8, 13  # odd shapes
    hidden = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    head = torch.randn(V, D, generator=g, dtype=torch.float64)
    teacher = torch.randn(B, T, V, generator=g, dtype=torch.float64)
    targets = torch.randint(0, V, (B, T), generator=g)
    mask = torch.rand(B, T, generator=g) > 0.2
    weight = torch.rand(B, T, generator=g) * 3
    terms = [{"kind": "forward_kl", "temperature": 2.0}, {"kind": "ce", "weight": 0.5}]
    objective = build_objective(terms, chunk_size=3)
    n = int(mask.sum())
    h = hidden.clone().requires_grad_(True)
    out = objective(h, head, DenseSignal(logits=teacher), targets, mask, n, token_weight=weight)
    out.loss.backward()
    # reference: per-token values from the unweighted objective's from_logits, one row at a time
    ref = torch.zeros(())
    hr = hidden.clone().requires_grad_(True)
    logits = hr @ head.T
    for b in range(B):
        for t in range(T):
            if mask[b, t]:
                one = torch.zeros(B, T, dtype=torch.bool)
                one[b, t] = True
                ref = ref + weight[b, t] * objective.from_logits(logits, DenseSignal(logits=teacher), targets, one,
                                                                 n).loss
    ref.backward()
    torch.testing.assert_close(out.loss.double(), ref.double(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(h.grad, hr.grad, rtol=1e-4, atol=1e-6)


def test_a_weight_of_two_is_the_token_twice():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 4, 9, generator=g)
    teacher = DenseSignal(logits=torch.randn(1, 4, 9, generator=g))
    targets = torch.randint(0, 9, (1, 4), generator=g)
    objective = build_objective([{"kind": "forward_kl"}, {"kind": "ce", "weight": 0.1}])
    mask = torch.ones(1, 4, dtype=torch.bool)
    w = torch.tensor([[1.0, 2.0, 1.0, 0.0]])
    weighted = objective.from_logits(logits, teacher, targets, mask, 4, token_weight=w).loss
    twice = torch.cat([logits, logits[:, 1:2]], 1), torch.cat([teacher.logits, teacher.logits[:, 1:2]], 1)
    rows = torch.tensor([[True, True, True, False, True]])
    plain = objective.from_logits(twice[0], DenseSignal(logits=twice[1]), torch.cat([targets, targets[:, 1:2]], 1),
                                  rows, 4).loss
    torch.testing.assert_close(weighted, plain, rtol=1e-6, atol=1e-7)
