"""The distillation loop, top to bottom: batches -> teacher signal -> student -> objective -> step.

Each optimizer step draws `grad_accum` micro-batches first and counts their loss tokens, so the
objective divides by the global token count and the step's loss and gradient do not depend on how the
batch was split. Metrics go to `metrics.jsonl` (one row per step, `step` and `loss` always present);
held-out evaluation rows carry `eval_kl`. A non-finite loss stops the run before the optimizer touches
the weights, keeping the last good checkpoint.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .. import fsutil
from ..errors import KdistillError
from ..hardware import autocast
from ..losses import DenseSignal
from . import checkpoint

log = logging.getLogger("kdistill")


class NonFiniteLoss(KdistillError):
    pass


@dataclass
class RunState:
    step: int = 0
    tokens: int = 0
    history: list = field(default_factory=list)


def final_hidden(model, input_ids, attention_mask):
    """The input of the model's output layer. Shapes: (B, T) -> (B, T, D)"""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, "model", None)
    if inner is not None and hasattr(inner, "layers"):
        return inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False)
    return out.hidden_states[-1]


def head_weight(model):
    return model.get_output_embeddings().weight


@torch.no_grad()
def teacher_signal(teacher, batch, vocab_size: int) -> DenseSignal:
    """The teacher's signal on the student's vocabulary (rows 0..vocab_size-1).

    Rows the teacher has beyond the student's (a padded teacher vocabulary) are dropped; rows the student
    has beyond the teacher's get -inf teacher logits, which every divergence treats as outside the
    teacher's support. Logits stay unmaterialised (hidden + weight) when no padding is needed.
    """
    hidden = final_hidden(teacher, batch["input_ids"], batch["attention_mask"])
    weight = head_weight(teacher)
    if weight.shape[0] >= vocab_size:
        return DenseSignal.from_hidden(hidden, weight[:vocab_size])
    logits = (hidden @ weight.T).float()
    pad = logits.new_full((*logits.shape[:-1], vocab_size - weight.shape[0]), float("-inf"))
    return DenseSignal(logits=torch.cat([logits, pad], dim=-1))


def to_device(batch: dict, device) -> dict:
    """Tensors and teacher signals (a cached batch's "signal") onto `device`."""
    def move(v):
        if isinstance(v, torch.Tensor):
            return v.to(device)
        if dataclasses.is_dataclass(v):
            return dataclasses.replace(v, **{f.name: move(getattr(v, f.name)) for f in dataclasses.fields(v)})
        return v

    return {k: move(v) for k, v in batch.items()}


def train_step(student, teacher, objective, micro_batches, device, progress: float) -> dict:
    """Forward/backward over the micro-batches of one optimizer step. Returns summed loss and terms."""
    num_tokens = sum(int(b["mask"].sum()) for b in micro_batches)
    vocab = head_weight(student).shape[0]
    total, terms = 0.0, {}
    for batch in micro_batches:
        batch = to_device(batch, device)
        signal = teacher_signal(teacher, batch, vocab) if teacher is not None else batch["signal"]
        with autocast(device):
            hidden = final_hidden(student, batch["input_ids"], batch["attention_mask"])
        out = objective(hidden, head_weight(student), signal, batch["targets"], batch["mask"],
                        num_tokens, progress=progress)
        if not torch.isfinite(out.loss):
            raise NonFiniteLoss(f"the loss became {out.loss.item()} at this step; the weights were not "
                                "updated and the last good checkpoint is kept. Lower train.lr or check the data")
        out.loss.backward()
        total += out.loss.item()
        for k, v in out.terms.items():
            terms[k] = terms.get(k, 0.0) + v
    return {"loss": total, "tokens": num_tokens, **terms}


def run_training(cfg, student, teacher, tokenizer, objective, stream, evaluate, device, output_dir,
                 resume_from=None) -> RunState:
    """Train to cfg.train.max_steps; `evaluate(step)` returns a dict of held-out metrics."""
    tc = cfg.train
    params = [p for p in student.parameters() if p.requires_grad]
    from .schedule import make_optimizer, warmup_cosine

    optimizer = make_optimizer(params, tc)

    scheduler = warmup_cosine(optimizer, tc.warmup_steps, tc.max_steps, tc.min_lr_ratio)
    state = RunState()
    if resume_from is not None:
        saved = checkpoint.load_checkpoint(resume_from, student, optimizer, scheduler)
        state.step, state.tokens = saved["step"], saved["tokens"]
        stream.load_state(saved["data"])
        log.info("resumed from %s at step %d", resume_from, state.step)
    metrics_path = output_dir / "metrics.jsonl"
    student.train()
    bar = tqdm(total=tc.max_steps, initial=state.step, desc="distilling", unit="step", dynamic_ncols=True)
    t_start, tokens_start = time.time(), state.tokens
    while state.step < tc.max_steps:
        micro = [stream.next() for _ in range(tc.grad_accum)]
        row = train_step(student, teacher, objective, micro, device, state.step / tc.max_steps)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip).item()
        if not math.isfinite(grad_norm):
            raise NonFiniteLoss(f"the gradient norm became {grad_norm} at step {state.step + 1}; the weights "
                                "were not updated and the last good checkpoint is kept. Lower train.lr")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        state.step += 1
        state.tokens += row["tokens"]
        rate = (state.tokens - tokens_start) / max(1e-9, time.time() - t_start)
        row.update(step=state.step, lr=lr, grad_norm=grad_norm, tokens_per_s=rate, tokens_seen=state.tokens,
                   time=time.time())
        if state.step % tc.eval_every == 0 or state.step == tc.max_steps:
            row.update(evaluate(state.step))
            student.train()
        fsutil.append_jsonl(metrics_path, row)
        state.history.append(row)
        kl = row.get("forward_kl", row.get("kl"))
        bar.set_postfix({"loss": f"{row['loss']:.3f}", **({"kl": f"{kl:.3f}"} if kl is not None else {}),
                         "tok/s": f"{rate:.0f}", **({"eval_kl": f"{row['eval_kl']:.3f}"} if "eval_kl" in row else {})})
        bar.update(1)
        if state.step % tc.checkpoint_every == 0 or state.step == tc.max_steps:
            checkpoint.save_checkpoint(output_dir, state.step, student, tokenizer, optimizer, scheduler,
                                       {"tokens": state.tokens, "data": stream.state()}, tc.keep_checkpoints)
    bar.close()
    student.eval()
    return state
