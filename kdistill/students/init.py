"""Initialise a LLaMA student from its teacher: embeddings, final norm and a choice of teacher layers
(a narrower student is then cut from them by `prune.py`). Layers are chosen and copied only from a
LLaMA-family teacher (`llama.LLAMA_BLOCKS`); from any other the student takes the embeddings alone.

Layer selection strategies (student.layer_selection):
- even: evenly spaced teacher layers, first and last included.
- first_last: the first half and the last half of the student's layers from the teacher's two ends.
- explicit: the indices in `student.layers`.
- importance (default): removal measured on calibration data. Starting from all teacher layers, each
  round scores every remaining layer by KL(teacher || teacher without it) on 256 calibration tokens and
  removes the lowest-scoring half of those still to go, until the student's depth remains. The pruned
  model is the teacher with layers dropped, so the score is the KL the student starts from.

Measured on SmolLM2-135M, 30 -> 8 layers, demo data (held-out KL at step 0 / after 20 steps, nats):
even 14.56 / 4.55, first_last 9.86 / 4.06, importance 5.91 / 3.09 (about 46 CPU-seconds to choose).
Plain greedy (one layer per round, 22 rounds, ~20x the work) chose a stack of held-out KL 6.72; with
128 calibration tokens the choice is worse (8.94), with 512 no better (6.06).
"""
from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn

from kdistill.base.errors import ConfigError, ModelError
from kdistill.models.heads import decoder, decoder_layers, head_weight, resident

log = logging.getLogger("kdistill")


def even_layers(n_teacher: int, n: int) -> list[int]:
    if n == 1:
        return [n_teacher - 1]
    return sorted({round(i * (n_teacher - 1) / (n - 1)) for i in range(n)})


def first_last_layers(n_teacher: int, n: int) -> list[int]:
    head = (n + 1) // 2
    return list(range(head)) + list(range(n_teacher - (n - head), n_teacher))


def _layer_slot(model) -> tuple[nn.Module, str]:
    """The module holding the list of blocks and that list's attribute name (LLaMA: `model`, "layers")."""
    full = decoder_layers(model)
    if full is None:
        raise ModelError(f"{type(model).__name__}: no list of decoder layers found to choose from")
    for parent in decoder(model).modules():
        for name, child in parent.named_children():
            if child is full:
                return parent, name
    raise ModelError(f"{type(model).__name__}: its decoder layers are not a child of its decoder")


@contextlib.contextmanager
def _only_layers(model, layers: list[int]):
    """Temporarily run `model` (any *ForCausalLM `modeling.decoder_layers` finds) with a subset of its layers."""
    parent, name = _layer_slot(model)
    full = getattr(parent, name)
    setattr(parent, name, nn.ModuleList([full[i] for i in layers]))
    try:
        yield model
    finally:
        setattr(parent, name, full)


def _kl(teacher_logprobs: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean KL(teacher || model) over masked positions. Shapes: (B, T, V), (B, T, V), (B, T) -> float"""
    lp = logits.float().log_softmax(-1)
    per_token = (teacher_logprobs.exp() * (teacher_logprobs - lp)).sum(-1)
    return per_token[mask].mean().item()


@torch.no_grad()
def layers_kl(teacher, layers: list[int], batch: dict, teacher_logprobs: torch.Tensor) -> float:
    """KL(teacher || teacher with only `layers`) on `batch`. Shapes: teacher_logprobs (B, T, V) -> float"""
    with _only_layers(teacher, layers):
        logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         use_cache=False).logits
    return _kl(teacher_logprobs, logits, batch["mask"])


def calibration_subset(batch: dict, max_tokens: int) -> dict:
    """The first rows of `batch` holding at least `max_tokens` counted tokens (whole rows: long contexts)."""
    counts = batch["mask"].sum(1).cumsum(0)
    rows = int((counts < max_tokens).sum()) + 1
    return {k: v[:rows] for k, v in batch.items()}


class TeacherTargets:
    """The teacher's next-token distributions on calibration rows, arranged so that the KL of any other
    final hidden state costs one product with the head and a logsumexp:
    KL(p || softmax(h W^T)) = sum_v p_v log p_v - h . (p W) + logsumexp(h W^T).
    Shapes: teacher_logprobs (N, V), head weight W (V, D)."""

    def __init__(self, teacher_logprobs: torch.Tensor, head_weight: torch.Tensor):
        probs = teacher_logprobs.exp()
        self.weight = head_weight
        self.negentropy = (probs * teacher_logprobs).nan_to_num().sum(-1)  # (N,), 0 log 0 = 0
        self.mean_row = probs.to(head_weight.dtype) @ head_weight  # (N, D): p W

    @classmethod
    def concat(cls, parts: list["TeacherTargets"]) -> "TeacherTargets":
        """The rows of several, in order (built a few rows at a time: never all (N, V) at once)."""
        whole = cls.__new__(cls)
        whole.weight = parts[0].weight
        whole.negentropy = torch.cat([t.negentropy for t in parts])
        whole.mean_row = torch.cat([t.mean_row for t in parts])
        return whole

    def rows(self, rows: slice) -> "TeacherTargets":
        """Those rows only (views, no copy)."""
        part = self.__class__.__new__(self.__class__)
        part.weight, part.negentropy, part.mean_row = self.weight, self.negentropy[rows], self.mean_row[rows]
        return part

    def kl(self, hidden: torch.Tensor) -> float:
        """Mean KL over rows. Shapes: hidden (N, D) -> float"""
        lse = (hidden @ self.weight.T).float().logsumexp(-1)
        return (self.negentropy - (hidden * self.mean_row).sum(-1).float() + lse).mean().item()


@torch.no_grad()
def removal_scores(teacher, current: list[int], batch: dict, targets: TeacherTargets) -> list[float]:
    """KL of the stack `current` with each one of its layers removed, computed from cached prefixes.

    One forward of `current` gives the hidden state entering each position k; removing the layer at k
    leaves that prefix unchanged, so only layers current[k+1:] are run again, from that state
    (about half the work of running every pruned stack from the start). Returns one KL per position."""
    am, mask = batch["attention_mask"], batch["mask"]
    inner = decoder(teacher)
    with _only_layers(teacher, current):
        states = inner(input_ids=batch["input_ids"], attention_mask=am, use_cache=False,
                       output_hidden_states=True).hidden_states
    scores = []
    for k in range(len(current)):
        with _only_layers(teacher, current[k + 1:]):
            out = inner(inputs_embeds=states[k], attention_mask=am, use_cache=False).last_hidden_state
        scores.append(targets.kl(out[mask]))
    return scores


@torch.no_grad()
def importance_layers(teacher, n: int, batch: dict, progress=None, max_tokens: int = 256,
                      halving: bool = True) -> list[int]:
    """Greedy removal by measured KL(teacher || pruned teacher) on `batch` (input_ids, attention_mask, mask).

    Each round scores every remaining layer by the KL of the stack without it (`removal_scores`) and
    removes the lowest-scoring ones: one per round when `halving` is false (plain greedy, ~L²/2 layer
    passes per round), half of those still to go when it is true (30 -> 8 layers in 5 rounds instead
    of 22; on SmolLM2-135M it also generalised better, see the module docstring). Only the first rows of
    the batch holding `max_tokens` tokens are used."""
    batch = calibration_subset(batch, max_tokens)
    logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    with resident(teacher.get_output_embeddings()):  # an offloaded head is on the meta device between forwards
        weight = head_weight(teacher).detach().clone()
    targets = TeacherTargets(logits[batch["mask"]].float().log_softmax(-1), weight)
    current = list(range(len(decoder_layers(teacher))))
    while len(current) > n:
        scores = removal_scores(teacher, current, batch, targets)
        count = (len(current) - n + 1) // 2 if halving else 1
        drop = {current[k] for k in sorted(range(len(current)), key=scores.__getitem__)[:count]}
        current = [x for x in current if x not in drop]
        if progress is not None:
            progress.update(len(drop))
    return current


def select_layers(strategy: str, teacher, n: int, explicit=None, batch=None, progress=None) -> list[int]:
    n_teacher = len(decoder_layers(teacher))
    if n > n_teacher:
        raise ConfigError(f"student.num_layers={n} is deeper than the teacher ({n_teacher}); "
                          "use student.init=random for a deeper student")
    if strategy == "even":
        return even_layers(n_teacher, n)
    if strategy == "first_last":
        return first_last_layers(n_teacher, n)
    if strategy == "explicit":
        bad = [i for i in explicit if not 0 <= i < n_teacher]
        if len(explicit) != n or bad:
            raise ConfigError(f"student.layers must list {n} teacher layer indices in 0..{n_teacher - 1}, "
                              f"got {explicit}")
        return list(explicit)
    return importance_layers(teacher, n, batch, progress)


def project_embeddings(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """Teacher embeddings onto their top-`dim` principal directions (zero-padded when `dim` is wider),
    scaled to the same RMS.

    Shapes: weight (V, Dt) -> (V, dim)
    """
    w = weight.float()
    _, _, v = torch.linalg.svd(w - w.mean(0), full_matrices=False)
    out = torch.nn.functional.pad(w @ v[:dim].T, (0, max(0, dim - w.shape[1])))  # wider: zero extra columns
    return out * (w.pow(2).mean().sqrt() / out.pow(2).mean().sqrt().clamp_min(1e-12))


def copy_block(student_layer, teacher_layer) -> None:
    """Load one LLaMA-family teacher layer. A bias the teacher lacks (Qwen2's o_proj: the student has
    attention biases for its q/k/v) starts at zero, which is exact. Raises RuntimeError when shapes differ."""
    with resident(teacher_layer):  # an offloaded teacher layer: its weights come in for the copy
        state = {k: v.detach().clone() for k, v in teacher_layer.state_dict().items()}
    missing, unexpected = student_layer.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith(".bias") for k in missing):
        raise RuntimeError(f"layer parameters differ: missing {missing}, unexpected {unexpected}")
    for name in missing:
        student_layer.get_parameter(name).zero_()


@torch.no_grad()
def init_from_teacher(student, teacher, layers: list[int] | None, blocks_missing: str | None = None) -> dict:
    """Copy what fits; returns a report of what was copied. `blocks_missing` (why the teacher has no
    LLaMA-compatible blocks, `llama.llama_blocks_missing`) leaves the final norm and every layer as initialised."""
    s_emb = student.get_input_embeddings().weight
    with resident(teacher.get_input_embeddings()) as embedding:
        t_emb = embedding.weight
        same_width = s_emb.shape[1] == t_emb.shape[1]
        rows = min(s_emb.shape[0], t_emb.shape[0])  # padded vocabularies: extra rows stay as initialised
        s_emb[:rows].copy_(t_emb[:rows].to(s_emb.dtype) if same_width else
                           project_embeddings(t_emb[:rows], s_emb.shape[1]))
    report = {"embeddings": "copied" if same_width else "projected (SVD)", "layers": []}
    if blocks_missing is not None:
        report.update(layers=f"random: {blocks_missing}", final_norm="not copied (ones)")
        return report
    if same_width:
        with resident(decoder(teacher).norm) as norm:
            decoder(student).norm.load_state_dict({k: v.clone() for k, v in norm.state_dict().items()})
        report["final_norm"] = "copied"
    if layers is not None and same_width:
        teacher_layers = decoder_layers(teacher)
        for i, j in enumerate(layers):
            try:
                copy_block(decoder_layers(student)[i], teacher_layers[j])
            except RuntimeError:
                report["layers"] = "shapes differ (heads/FFN): layers random"
                break
            report["layers"].append(j)
    if not student.config.tie_word_embeddings and student.get_output_embeddings() is not None:
        if same_width:
            with resident(teacher.get_output_embeddings()):
                student.get_output_embeddings().weight.copy_(head_weight(teacher))
    return report
