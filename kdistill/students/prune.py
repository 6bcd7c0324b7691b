"""Width pruning by activation importance (Minitron: Muralidharan et al., 2024, "Compact Language Models
via Pruning and Knowledge Distillation"): a narrower LLaMA student made of slices of its teacher.

On calibration tokens, with the student's own stack of teacher layers:
- a head's importance is the mean L2 norm of its attention output (the input of o_proj, per head);
- an FFN channel's is the mean |activation| entering down_proj, act(gate) * up;
- a hidden (embedding) channel's is the mean |output| of every RMSNorm (each layer's two and the final one),
  summed: the channels the whole network reads most.
The student keeps the most important of each, in the teacher's order, and copies those slices: embedding
columns, norm gains, q/k/v/gate/up input columns, o/down output rows. Grouped-query attention is kept
whole: a KV group's score is the sum of its best query heads', the best groups are kept and in each the
best query heads. Keeping everything reproduces the teacher exactly; a narrower RMSNorm sees a different
RMS, which distillation then corrects (as in Minitron, no retraining here). Biases (Qwen2's q/k/v, a
LLaMA with attention_bias or mlp_bias) are sliced with their rows; an o_proj bias the teacher lacks is zero.
"""
from __future__ import annotations

import torch

from kdistill.models.heads import decoder, decoder_layers, resident
from kdistill.students.init import _only_layers


def _mean_abs(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean |x| over kept positions. Shapes: x (B, T, C), keep (B, T) bool -> (C,)"""
    return x[keep].abs().float().mean(0)


@torch.no_grad()
def activation_importance(teacher, layers: list[int], batch: dict) -> dict:
    """Importance of heads, FFN channels (per student layer) and hidden channels on `batch`.

    Returns {"heads": [(H,)] * L, "ffn": [(F,)] * L, "hidden": (D,)}, float32 on the CPU."""
    keep = batch["attention_mask"].bool()
    cfg = teacher.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    found = {"heads": [None] * len(layers), "ffn": [None] * len(layers), "hidden": []}
    handles = []

    def norm_hook(_module, _inputs, output):
        found["hidden"].append(_mean_abs(output, keep))

    def layer_hooks(i, layer):
        def heads(_module, inputs):
            x = inputs[0]
            norms = x.view(*x.shape[:-1], -1, head_dim).float().norm(dim=-1)  # (B, T, H)
            found["heads"][i] = norms[keep].mean(0)

        def ffn(_module, inputs):
            found["ffn"][i] = _mean_abs(inputs[0], keep)

        return [layer.self_attn.o_proj.register_forward_pre_hook(heads),
                layer.mlp.down_proj.register_forward_pre_hook(ffn),
                layer.input_layernorm.register_forward_hook(norm_hook),
                layer.post_attention_layernorm.register_forward_hook(norm_hook)]

    inner, teacher_layers = decoder(teacher), decoder_layers(teacher)
    try:
        for i, j in enumerate(layers):
            handles += layer_hooks(i, teacher_layers[j])
        handles.append(inner.norm.register_forward_hook(norm_hook))
        with _only_layers(teacher, layers):
            inner(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    found["hidden"] = torch.stack(found["hidden"]).sum(0)
    return {k: ([t.cpu() for t in v] if isinstance(v, list) else v.cpu()) for k, v in found.items()}


def top_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, in increasing index order. Shapes: (C,) -> (k,)"""
    return scores.topk(k).indices.sort().values


def keep_heads(scores: torch.Tensor, n_kv: int, n_heads: int, student_kv: int, student_heads: int) -> tuple:
    """Query heads and KV groups to keep under grouped-query attention. Returns (heads, groups), sorted.

    Shapes: scores (H,) -> (student_heads,), (student_kv,)"""
    group, student_group = n_heads // n_kv, student_heads // student_kv
    per_group = scores.view(n_kv, group)
    best = per_group.topk(student_group, dim=1)
    groups = top_sorted(best.values.sum(1), student_kv)
    heads = torch.cat([g * group + best.indices[g].sort().values for g in groups.tolist()])
    return heads, groups


def attention_prunable(teacher_config, sizes: dict) -> str | None:
    """None when heads can be cut from the teacher's attention, else the reason they cannot."""
    t = teacher_config
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    n_kv = getattr(t, "num_key_value_heads", None) or t.num_attention_heads
    if sizes["hidden_size"] // sizes["num_heads"] != head_dim:
        return f"student head size {sizes['hidden_size'] // sizes['num_heads']} differs from the teacher's {head_dim}"
    if sizes["num_kv_heads"] > n_kv or sizes["num_heads"] // sizes["num_kv_heads"] > t.num_attention_heads // n_kv:
        return (f"student attention ({sizes['num_heads']} heads, {sizes['num_kv_heads']} KV) does not fit in the "
                f"teacher's ({t.num_attention_heads} heads, {n_kv} KV groups)")
    if sizes["num_heads"] > t.num_attention_heads:
        return "student has more heads than the teacher"
    return None


def _rows(weight: torch.Tensor, blocks: torch.Tensor, size: int) -> torch.Tensor:
    """Rows of whole blocks of `size` (heads). Shapes: (R, C), (k,) -> (k * size, C)"""
    return weight.view(-1, size, weight.shape[1])[blocks].reshape(-1, weight.shape[1])


@torch.no_grad()
def copy_layer(student_layer, teacher_layer, hidden: torch.Tensor, ffn: torch.Tensor, heads, groups,
               head_dim: int) -> None:
    """Copy the kept slices of one teacher layer; `heads`/`groups` None leaves attention as initialised."""
    s, t = student_layer, teacher_layer
    s.input_layernorm.weight.copy_(t.input_layernorm.weight[hidden])
    s.post_attention_layernorm.weight.copy_(t.post_attention_layernorm.weight[hidden])
    s.mlp.gate_proj.weight.copy_(t.mlp.gate_proj.weight[ffn][:, hidden])
    s.mlp.up_proj.weight.copy_(t.mlp.up_proj.weight[ffn][:, hidden])
    s.mlp.down_proj.weight.copy_(t.mlp.down_proj.weight[hidden][:, ffn])
    _copy_bias(s.mlp.gate_proj, t.mlp.gate_proj, ffn)
    _copy_bias(s.mlp.up_proj, t.mlp.up_proj, ffn)
    _copy_bias(s.mlp.down_proj, t.mlp.down_proj, hidden)
    if heads is None:
        return
    a, b = s.self_attn, t.self_attn
    a.q_proj.weight.copy_(_rows(b.q_proj.weight, heads, head_dim)[:, hidden])
    a.k_proj.weight.copy_(_rows(b.k_proj.weight, groups, head_dim)[:, hidden])
    a.v_proj.weight.copy_(_rows(b.v_proj.weight, groups, head_dim)[:, hidden])
    a.o_proj.weight.copy_(_rows(b.o_proj.weight.T, heads, head_dim).T[hidden])
    _copy_bias(a.q_proj, b.q_proj, _head_rows(heads, head_dim))
    _copy_bias(a.k_proj, b.k_proj, _head_rows(groups, head_dim))
    _copy_bias(a.v_proj, b.v_proj, _head_rows(groups, head_dim))
    _copy_bias(a.o_proj, b.o_proj, hidden)


def _head_rows(blocks: torch.Tensor, size: int) -> torch.Tensor:
    """Row indices of whole blocks of `size` (heads). Shapes: (k,) -> (k * size,)"""
    return (blocks[:, None] * size + torch.arange(size)).flatten()


def _copy_bias(student_linear, teacher_linear, keep: torch.Tensor) -> None:
    """The kept entries of the teacher's bias; zero where only the student has one."""
    if student_linear.bias is None:
        return
    if teacher_linear.bias is None:
        student_linear.bias.zero_()
    else:
        student_linear.bias.copy_(teacher_linear.bias[keep])


@torch.no_grad()
def prune_into(student, teacher, layers: list[int], batch: dict) -> dict:
    """Fill a narrower (or equal) LLaMA `student` with importance-ranked slices of `layers` of the teacher.

    Returns a report: what was kept and, when heads cannot be cut (head size or GQA groups differ), that
    attention stayed random."""
    t, c = teacher.config, student.config
    sizes = {"hidden_size": c.hidden_size, "num_heads": c.num_attention_heads,
             "num_kv_heads": c.num_key_value_heads}
    importance = activation_importance(teacher, layers, batch)
    hidden = top_sorted(importance["hidden"], c.hidden_size)
    s_emb = student.get_input_embeddings().weight
    with resident(teacher.get_input_embeddings()) as embedding, resident(decoder(teacher).norm) as norm:
        rows = min(s_emb.shape[0], embedding.weight.shape[0])  # padded vocabularies: rows past the shorter stay
        s_emb[:rows].copy_(embedding.weight[:rows, hidden])
        decoder(student).norm.weight.copy_(norm.weight[hidden])
    why_not = attention_prunable(t, sizes)
    n_kv = getattr(t, "num_key_value_heads", None) or t.num_attention_heads
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    for i, j in enumerate(layers):
        ffn = top_sorted(importance["ffn"][i], c.intermediate_size)
        heads = groups = None
        if why_not is None:
            heads, groups = keep_heads(importance["heads"][i], n_kv, t.num_attention_heads,
                                       c.num_key_value_heads, c.num_attention_heads)
        with resident(decoder_layers(teacher)[j]) as teacher_layer:  # an offloaded layer comes in for the copy
            copy_layer(decoder_layers(student)[i], teacher_layer, hidden, ffn, heads, groups, head_dim)
    return {"embeddings": f"pruned to {c.hidden_size} of {t.hidden_size} channels (activation importance)",
            "final_norm": "pruned", "layers": list(layers),
            "attention": "pruned (head importance)" if why_not is None else f"random ({why_not})",
            "ffn": f"pruned to {c.intermediate_size} of {t.intermediate_size} channels"}
