"""Distillation losses: divergences, teacher signals, schedules, and the chunked training objective.

Conventions (every function in this package follows them; they are written here and nowhere else):

- Argument order is student first, then teacher. `*_logits` are raw, `*_logprobs` log-softmax,
  `*_probs` softmax. p is the teacher distribution, q the student's.
- `forward_kl` = KL(teacher ‖ student) (mode-covering), `reverse_kl` = KL(student ‖ teacher)
  (mode-seeking). `jsd(beta)` mixes m = beta·teacher + (1-beta)·student as in the GKD paper, 0 < beta < 1;
  its endpoints are `forward_kl` and `reverse_kl`, not special cases. Mixtures of divergences are
  weighted terms of the objective. The table of divergences is in `divergences`.
- Divergences are per token: (..., V) -> (...). Temperature is an argument of each divergence (a number,
  or a tensor of per-token temperatures); the T² rescaling is the `t2_scale` option of the objective,
  never applied inside a divergence.
- `mask` is bool, True where a token counts (labels with -100 exist only at the data boundary).
  `reduction.reduce_tokens(values, mask, num_tokens)` is the one function that turns per-token values
  into a scalar: the masked sum divided by the global token count of the optimizer step, so gradient
  accumulation, several processes and chunking all give the full-batch loss. Zero tokens give 0.
- Computation is in fp32 (fp64 inputs stay fp64). Teacher ids with a -inf logit are outside its support
  and dropped from both distributions, so padded vocabularies give finite values and gradients.
- The teacher is a signal of one of two types (`signals`): `DenseSignal` (logits, or hidden states plus
  output weight) or `SparseSignal` (K ids with log-probabilities: top-k or sampled), with an explicit
  missing-mass policy. Losses never know whether the teacher ran online or came from a cache.
- The student's (tokens x vocab) logits exist one chunk of rows at a time (`fused.chunked`), in forward and
  backward, for every term; the chunk size comes from the vocabulary and a memory budget unless given.
- Shape letters: B batch, T time, V vocab, D width, K top-k, N flattened tokens (rows).

Feature terms (hidden states, attention of mapped layers) are the other kind of term: `features` holds
their per-token formulas, `feature_terms` their config; `Objective.features` lists them and
`train/features.FeatureLoss` computes them, with the projections they train.

Files: divergences (per-token formulas), signals (teacher signals, supports, missing mass), selective
(entropy-gated top-k), schedules, reduction, config (term validation), objective (`build_objective`);
fused/ (the fast paths: chunked output layer, closed-form chunk gradient, its C kernel); cross/ (across
tokenizers: alignment by byte offsets, `CrossSignal` and `uld`/`hybrid` per group, chunks of whole groups).
"""
from kdistill.losses.config import Term, parse_terms
from kdistill.losses.objective import LossOutput, Objective, build_objective
from kdistill.losses.reduction import reduce_tokens
from kdistill.losses.signals import DenseSignal, SparseSignal

__all__ = ["DenseSignal", "LossOutput", "Objective", "SparseSignal", "Term", "build_objective", "parse_terms",
           "reduce_tokens"]
