"""What KL each export type should give, and the warning when a measured export is far above it.

The bounds are mean KL(fp32 student || export) in nats/token on held-out text, about twice the worst we
measured on ~50-150M-parameter students (the demo student and SmolLM2-135M, kdistill/export/README.md):
F16 2.3e-6, Q8_0 1.5e-3, int8 5.3e-3, Q5_0 0.062, Q4_0 0.30-0.31. int4 shares Q4_0's bound: Q4_0's rule
is one of its candidates, so at --max-bits 4.5 it is no worse; at the default 5 bits it measured 0.14.
Larger models quantise with less KL; a tiny or unusual one may need more bits. A result above its bound
means the export is much worse than its type promises (the old min/max int4 gave 1.53 on the demo
student, five times Q4_0): the warning says so and what to try.
"""
from __future__ import annotations

EXPECTED_KL = {"F32": 1e-4, "F16": 1e-3, "Q8_0": 0.01, "int8": 0.02, "Q5_0": 0.15, "Q4_0": 0.6, "int4": 0.6}
NEXT_TRY = {
    "F32": "the float student itself may not load cleanly; compare it with its checkpoint",
    "F16": "try --type F32 (weights beyond the f16 range are the usual cause)",
    "Q8_0": "try --format int8 (per-channel scales) or --type F16",
    "int8": "try --format gguf --type Q8_0 (a scale per 32 weights) or keep the model in float",
    "Q5_0": "try --type Q8_0, or --format int4 (its scheme is chosen by measured KL)",
    "Q4_0": "try --format int4 (its scheme is chosen by measured KL) or --type Q5_0",
    "int4": "try --max-bits 5.5 or 6 (more layers in int8), or --format gguf --type Q5_0, or --format int8",
}


def kind_of(fmt: str, qtype: str | None) -> str:
    """The key of EXPECTED_KL for an export: the GGUF type, or int8/int4."""
    return qtype if fmt == "gguf" else fmt


def kl_warning(kind: str, kl_mean: float) -> str | None:
    """A warning line when `kl_mean` is above `kind`'s bound, else None."""
    bound = EXPECTED_KL[kind]
    if kl_mean <= bound:
        return None
    return (f"warning: this {kind} export's KL to the fp32 student, {kl_mean:.3g} nats/token, is far above what "
            f"{kind} should give (<= {bound:g} on the ~100M-parameter students measured, "
            f"kdistill/export/bounds.py): {NEXT_TRY[kind]}")
