"""The fractal student: one complex-valued block applied T times with shared weights (seed 000).

A token becomes a complex state Z; ONE block updates it T times, `Z ← (1 − α)·Z + α·σ(Layer(Z))`; a head
tied to the embedding reads the vocabulary out. Depth costs compute, not parameters: the parameter count
does not depend on T.

Complex numbers are simulated with real tensors. A real width D = hidden_size holds N = D/2 complex units,
laid out as h = [Re Z | Im Z] (h ∈ R^{B×T×D}). A complex linear map W = A + iB (A, B ∈ R^{m×n}) is, on
that layout, the real block matrix [[A, −B], [B, A]]: W(x + iy) = (Ax − By) + i(Bx + Ay).

Equations (t, s positions; j a complex unit; H heads of d = N/H units; x_t the token id):

    Z⁰_t    = √D · e_{x_t}                           e_v ∈ C^N: row v of the (tied) embedding, as complex
    U       = g ⊙ Z / rms(Z)                         rms over the D real numbers of a position; g ∈ R^N
    Q, K, V = W_q U, W_k U, W_v U                    complex N → N, split into H heads
    Q̃_tj    = Q_tj · e^{i·p_t·θ_j}                   rotary position is a phase: θ_j = base^(−j/d),
    K̃_sj    = K_sj · e^{i·p_s·θ_j}                   p_t = position of token t (left padding skipped)
    S_ts    = Re Σ_j Q̃_tj · conj(K̃_sj) / √(2d)       = Re Σ_j Q_tj conj(K_sj) e^{i(p_t − p_s)θ_j}, per head
    P_ts    = softmax over s ≤ t with mask_s = 1 (s = t always kept) of S_ts
    A_t     = Σ_s P_ts · V_s                         causal mixing across positions
    Layer(Z) = Z + W_o A + W_2 φ(W_1 U + b_1) + b_2  W_1: N → M, W_2: M → N complex (M = intermediate/2)
    Zⁿ⁺¹    = (1 − α) Zⁿ + α σ(Layer(Zⁿ))            n = 0 … T−1, the same weights every time
    h_t     = g_f ⊙ Z^T_t / rms(Z^T_t)               the head's input, returned as hidden_states[-1]
    logit_tv = Re⟨e_v, h_t⟩ = h_t · E_v              real dot product on the [Re | Im] layout

σ = split tanh and φ = split GELU (each acts on real and imaginary parts apart, so elementwise on h).
The attention is the only place positions meet, so outputs at t depend on tokens ≤ t only. Because
σ = tanh, the state stays in the box (−1, 1)^D once it is there: each step is a convex mix of the old
state and a point of the box. The `Z +` inside Layer lets a step leave the state nearly unchanged
(tanh(Z + small) ≈ Z), so ten steps behave like a residual stack rather than a ten-fold squashing.

Core parameters (everything but embedding and head) at the defaults D = 256, M = 256 complex:
4·2N² (q, k, v, o) + 2·2NM (W_1, W_2) + 2M + 2N (biases) + 2N (two gains) = 263,168, whatever V and T are.

There is no KV cache: `generate()` recomputes the whole prefix every step (fine for a student this small).
`gradient_checkpointing_enable()` recomputes each block application in the backward pass while training
(activation memory then grows with one state per step instead of every intermediate of every step).
`register()` makes `AutoConfig`/`AutoModelForCausalLM` know model type "kdistill_fractal".
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import CausalLMOutputWithPast

from kdistill.base.errors import ConfigError


def complex_matrix(weight_re: torch.Tensor, weight_im: torch.Tensor) -> torch.Tensor:
    """The real matrix that applies A + iB to [Re | Im] vectors. Shapes: (m, n), (m, n) -> (2m, 2n)."""
    return torch.cat([torch.cat([weight_re, -weight_im], 1), torch.cat([weight_im, weight_re], 1)], 0)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[Re | Im] layout to one [Re | Im] vector per head. Shapes: (B, T, D) -> (B, H, T, D/H)."""
    b, t, width = x.shape
    return x.view(b, t, 2, num_heads, width // (2 * num_heads)).permute(0, 3, 1, 2, 4).reshape(b, num_heads, t, -1)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `split_heads`. Shapes: (B, H, T, D/H) -> (B, T, D)."""
    b, h, t, width = x.shape
    return x.view(b, h, t, 2, width // 2).permute(0, 2, 3, 1, 4).reshape(b, t, h * width)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Multiply each complex unit by e^{iφ}. Shapes: x (B, H, T, 2d), cos/sin (B, 1, T, d) -> (B, H, T, 2d)."""
    re, im = x.chunk(2, dim=-1)
    return torch.cat([re * cos - im * sin, re * sin + im * cos], dim=-1)


def token_positions(attention_mask: torch.Tensor | None, batch: int, length: int, device) -> torch.Tensor:
    """Position of each token, counting only unmasked ones (left padding gets 0). Shapes: (B, T) -> (B, T)."""
    if attention_mask is None:
        return torch.arange(length, device=device).expand(batch, length)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def rotary_phases(positions: torch.Tensor, units: int, base: float, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of p·θ_j with θ_j = base^(−j/units). Shapes: positions (B, T) -> 2 × (B, 1, T, units)."""
    theta = base ** (-torch.arange(units, device=positions.device, dtype=torch.float32) / units)
    angles = positions.float()[:, None, :, None] * theta
    return angles.cos().to(dtype), angles.sin().to(dtype)


def key_mask(attention_mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """Allowed (query, key) pairs: causal, padded keys removed, the diagonal always kept so that padded
    queries see themselves instead of nothing (an all-masked row is NaN). None means plain causal.
    Shapes: (B, T) -> (B, 1, T, T) bool."""
    if attention_mask is None or bool(attention_mask.all()):  # nothing padded: the fast is_causal kernel
        return None
    causal = torch.ones(length, length, dtype=torch.bool, device=attention_mask.device).tril()
    diagonal = torch.eye(length, dtype=torch.bool, device=attention_mask.device)
    return causal & (attention_mask.bool()[:, None, None, :] | diagonal)


def causal_attention(q, k, v, cos, sin, mask: torch.Tensor | None, num_heads: int) -> torch.Tensor:
    """Complex attention with scores Re(q̃·conj(k̃)): on the [Re | Im] head layout that is a real dot
    product, so the fused kernel does it. Shapes: q, k, v (B, T, D), cos/sin (B, 1, T, d) -> (B, T, D)."""
    q, k, v = (split_heads(x, num_heads) for x in (q, k, v))
    q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
    return merge_heads(out)


def principal_embeddings(teacher_weight: torch.Tensor, width: int, rms: float, seed: int = 0) -> torch.Tensor:
    """Teacher rows on their top `width` principal directions, spread over all coordinates, entry RMS `rms`.

    The uncentred truncated SVD keeps dot products as well as any rank-`width` map can (Eckart-Young); the
    random rotation after it keeps them exactly but stops the largest direction (often the mean) from
    filling one coordinate, which the per-position RMS norm would then be dominated by. A teacher narrower
    than `width` is padded with zero directions first. Shapes: (V, Dt) -> (V, width), float32."""
    w = teacher_weight.detach().float()
    _, basis = torch.linalg.eigh((w.T @ w).double())  # right singular vectors, ascending singular values
    k = min(width, w.shape[1])
    coords = F.pad(w @ basis[:, -k:].flip(-1).to(w), (0, width - k))
    generator = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(width, width, generator=generator, dtype=torch.float64))
    out = coords @ rotation.to(coords)
    return out * (rms / out.pow(2).mean().sqrt().clamp(min=1e-12))


@torch.no_grad()
def init_embeddings_from_teacher(
    model: FractalForCausalLM, teacher_embedding_weight: torch.Tensor, seed: int = 0
) -> nn.Parameter:
    """Overwrite the student embedding (and so the tied head) with `principal_embeddings` of the teacher's,
    at the entry RMS of the student's own init (`initializer_range`). Token ids must mean the same tokens in
    both (one tokenizer); rows past the shorter vocabulary (the teacher's padding rows, say) are left alone.
    Shapes: teacher_embedding_weight (V_t, D_t) -> the student's embedding weight (V, D)."""
    weight = model.get_input_embeddings().weight
    rows = min(weight.shape[0], teacher_embedding_weight.shape[0])
    rms = model.config.initializer_range
    projected = principal_embeddings(teacher_embedding_weight[:rows], weight.shape[1], rms, seed)
    weight[:rows] = projected.to(weight.device, weight.dtype)
    return weight


def core_parameter_count(model: nn.Module) -> int:
    """Parameters outside the token embedding and the head (counted once when tied)."""
    outer = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    return sum(p.numel() for p in model.parameters() if id(p) not in outer)


@strict
class FractalConfig(PreTrainedConfig):
    """Sizes of the fractal student. Widths are real widths: hidden_size = 2 × the complex units."""

    model_type = "kdistill_fractal"
    attribute_map = {"num_hidden_layers": "num_steps", "num_attention_heads": "num_heads"}

    vocab_size: int = 49152
    hidden_size: int = 256  # D real = D/2 complex units
    intermediate_size: int = 512  # real width of the feed-forward (M = 256 complex units)
    num_steps: int = 10  # T, applications of the one shared block
    alpha: float = 0.5  # step size of Z ← (1 − α)Z + α σ(Layer(Z))
    num_heads: int = 4
    max_position_embeddings: int = 2048  # longest sequence trained for; rotary phases need no table
    rope_base: float = 10000.0
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    use_cache: bool = False  # there is no KV cache; generate() recomputes the prefix
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def validate_architecture(self):
        if self.hidden_size % (2 * self.num_heads) or self.intermediate_size % 2:
            raise ConfigError(
                f"hidden_size ({self.hidden_size}) must be a multiple of 2·num_heads ({2 * self.num_heads}) and "
                f"intermediate_size ({self.intermediate_size}) even: real widths hold [Re | Im] halves."
            )
        if self.num_steps < 1 or not 0.0 < self.alpha <= 1.0:
            raise ConfigError(f"need num_steps ≥ 1 and 0 < alpha ≤ 1, got {self.num_steps} and {self.alpha}.")


class ComplexLinear(nn.Module):
    """y = W z + b with complex W = A + iB, on the [Re | Im] layout. Shapes: (..., 2n) -> (..., 2m)."""

    def __init__(self, n_in: int, n_out: int, bias: bool):
        super().__init__()
        self.weight_re = nn.Parameter(torch.empty(n_out, n_in))
        self.weight_im = nn.Parameter(torch.empty(n_out, n_in))
        self.bias = nn.Parameter(torch.zeros(2 * n_out)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, complex_matrix(self.weight_re, self.weight_im), self.bias)


class ComplexRMSNorm(nn.Module):
    """Z / rms(Z) times a real gain per complex unit (phases kept). Shapes: (..., 2n) -> (..., 2n)."""

    def __init__(self, units: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(units))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight.repeat(2)


class FractalBlock(nn.Module):
    """The one shared block: a full step Zⁿ → Zⁿ⁺¹ of the module docstring. Shapes: (B, T, D) -> (B, T, D)."""

    def __init__(self, config: FractalConfig):
        super().__init__()
        n, m = config.hidden_size // 2, config.intermediate_size // 2
        self.alpha, self.num_heads = config.alpha, config.num_heads
        self.norm = ComplexRMSNorm(n, config.rms_norm_eps)
        self.q, self.k, self.v, self.o = (ComplexLinear(n, n, bias=False) for _ in range(4))
        self.up, self.down = ComplexLinear(n, m, bias=True), ComplexLinear(m, n, bias=True)

    def forward(self, z, cos, sin, mask: torch.Tensor | None) -> torch.Tensor:
        u = self.norm(z)
        mixed = causal_attention(self.q(u), self.k(u), self.v(u), cos, sin, mask, self.num_heads)
        layer = z + self.o(mixed) + self.down(F.gelu(self.up(u)))
        return (1 - self.alpha) * z + self.alpha * torch.tanh(layer)


class FractalForCausalLM(PreTrainedModel, GenerationMixin):
    """Embedding, `num_steps` applications of one `FractalBlock`, final norm, head (tied by default)."""

    config_class = FractalConfig
    config: FractalConfig
    base_model_prefix = "fractal"
    _tied_weights_keys = {"lm_head.weight": "embed_tokens.weight"}
    _no_split_modules = ["FractalBlock"]
    _supports_sdpa = True
    supports_gradient_checkpointing = True

    def __init__(self, config: FractalConfig):
        super().__init__(config)
        self.gradient_checkpointing = False  # set, with _gradient_checkpointing_func, by transformers
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.block = FractalBlock(config)
        self.norm = ComplexRMSNorm(config.hidden_size // 2, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        if isinstance(module, ComplexLinear):
            init.normal_(module.weight_re, mean=0.0, std=self.config.initializer_range)
            init.normal_(module.weight_im, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        else:
            super()._init_weights(module)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # no cache: generate() must not build one

    def prepare_inputs_for_generation(self, input_ids, next_sequence_length=None, past_key_values=None, **kwargs):
        # Without a cache every step re-reads the whole prefix, so never slice input_ids to the new token.
        return super().prepare_inputs_for_generation(input_ids, **kwargs)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool = True,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        """input_ids (B, T), attention_mask (B, T) 1 = token 0 = padding -> logits (B, T, V).

        hidden_states (with output_hidden_states) holds Z⁰ … Z^{T−1} and the normed Z^T, the head's exact input.
        `labels` (B, T) with -100 for ignored tokens gives the mean next-token cross-entropy. Cache arguments
        that generate() may pass (past_key_values, use_cache) are ignored."""
        batch, length = input_ids.shape
        if position_ids is None:
            position_ids = token_positions(attention_mask, batch, length, input_ids.device)
        z = self.embed_tokens(input_ids) * math.sqrt(self.config.hidden_size)
        units_per_head = self.config.hidden_size // (2 * self.config.num_heads)
        cos, sin = rotary_phases(position_ids, units_per_head, self.config.rope_base, z.dtype)
        mask = key_mask(attention_mask, length)
        states = [z]
        step = self.block
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            step = functools.partial(self._gradient_checkpointing_func, self.block)  # recomputed in backward
        for _ in range(self.config.num_steps):
            z = step(z, cos, sin, mask)
            states.append(z)
        states[-1] = self.norm(z)
        logits = self.lm_head(states[-1][:, -logits_to_keep:] if logits_to_keep else states[-1])
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        keep_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        out = CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=tuple(states) if keep_states else None)
        return out if return_dict else out.to_tuple()


def register() -> None:
    """Let AutoConfig / AutoModelForCausalLM load "kdistill_fractal" folders. Safe to call more than once."""
    AutoConfig.register(FractalConfig.model_type, FractalConfig, exist_ok=True)
    AutoModelForCausalLM.register(FractalConfig, FractalForCausalLM, exist_ok=True)
