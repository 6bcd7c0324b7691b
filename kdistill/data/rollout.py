"""On-policy batches: a model continues the data's prompts and the batch trains on what it wrote.

    stream = RolloutStream(BatchStream(...), cfg.rollout, seed, grad_accum, seq_len, student,
                           writer=student, eos_ids={eos}, pad_id=pad, vocab_size=V, device=device)
    batch = stream.next()        # a collated batch (+ behaviour_logprobs), from the data or generated

Each optimizer step tosses a coin from the run's seed and the step (`is_rollout_step`): with probability
`rollout.lmbda` its batches are generated (GKD), else they are the data's own (the wrapped BatchStream).
A generated batch has the keys of `batches.collate` (right-padded), so it goes through the same teacher
source and objective as any other; its loss tokens are the generated ones before the first EOS (the EOS
and everything after are masked), so the loop's token count is taken after generation. It also carries
`behaviour_logprobs` (B, T): the log-probability of each generated target under the distribution that
sampled it (the `reverse_kl_pg` term's importance ratio). A generation serves `rollout.buffer` rollout
steps; its age in steps is the staleness logged with each step (`last_info`).

Prompts: the tokens before the first loss position (instruction records: the prompt part); where the loss
starts at the first token (plain text), the first `rollout.prompt_tokens` tokens. A prompt longer than
seq_len - max_new_tokens is cut from the left (said once). Generation: KV cache (models without one
recompute the prefix), left padding, inference mode, eval mode and gradient checkpointing off (both
restored), a torch.Generator seeded from the seed and step, so a resumed run writes the same text.
The stream's state (data position, buffered token ids and log-probabilities) is JSON.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import random

import torch

from kdistill.base.errors import ConfigError
from kdistill.base.hardware import autocast
from kdistill.data import batches as batching

NO_LOGPROB = float("nan")  # behaviour log-probability of a token that was not sampled (prompt, data)


def is_rollout_step(seed: int, step: int, lmbda: float) -> bool:
    """The step's coin: the same for a resumed run (and every process of one run)."""
    return lmbda > 0 and random.Random(seed * 1_000_003 + step).random() < lmbda


def example_ids(batch: dict, i: int) -> tuple[list[int], list[bool]]:
    """Row i of a collated batch back as (ids, mask) of its example (mask[k]: ids[k] is a loss token)."""
    n = int(batch["attention_mask"][i].sum())
    ids = batch["input_ids"][i, :n].tolist() + [int(batch["targets"][i, n - 1])]
    return ids, [False] + batch["mask"][i, :n].tolist()


def prompt_of(ids: list[int], mask: list[bool], prompt_tokens: int) -> list[int]:
    """The tokens before the first loss token; plain text (loss from the first target on): the first
    `prompt_tokens`."""
    first = next((k for k, m in enumerate(mask) if m), None)
    return ids[:prompt_tokens] if first is None or first <= 1 else ids[:first]


def batch_prompts(batch: dict, prompt_tokens: int, max_prompt: int) -> tuple[list[list[int]], int]:
    """Every row's prompt, cut from the left to `max_prompt` tokens; returns (prompts, how many were cut)."""
    prompts, cut = [], 0
    for i in range(batch["input_ids"].shape[0]):
        p = prompt_of(*example_ids(batch, i), prompt_tokens)
        cut += len(p) > max_prompt
        prompts.append(p[-max_prompt:])
    return prompts, cut


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Shapes: -> input_ids (B, P), attention_mask (B, P), prompts aligned to the right."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        attn[i, width - len(p):] = 1
    return ids.to(device), attn.to(device)


def sampling_logprobs(logits: torch.Tensor, temperature: float, top_p: float,
                      mix_logits: torch.Tensor | None = None, mix: float = 0.0) -> torch.Tensor:
    """log μ: softmax(logits / T), mixed as (1 - mix)·it + mix·softmax(mix_logits / T), then top-p.

    Shapes: logits (B, V), mix_logits (B, V) -> (B, V)
    """
    logprobs = (logits.float() / temperature).log_softmax(-1)
    if mix_logits is not None and mix > 0:
        other = (mix_logits.float() / temperature).log_softmax(-1)
        logprobs = torch.logaddexp(logprobs + math.log1p(-mix), other + math.log(mix))
    if top_p < 1.0:
        sorted_lp, order = logprobs.sort(-1, descending=True)
        before = sorted_lp.exp().cumsum(-1) - sorted_lp.exp()  # mass of the ids ranked above
        drop = torch.zeros_like(logprobs, dtype=torch.bool).scatter(-1, order, before >= top_p)
        logprobs = logprobs.masked_fill(drop, float("-inf")).log_softmax(-1)
    return logprobs


def to_vocab(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """A model's next-token logits on the student's vocabulary (-inf for ids the model lacks)."""
    if logits.shape[-1] >= vocab_size:
        return logits[..., :vocab_size]
    return torch.cat([logits, logits.new_full((*logits.shape[:-1], vocab_size - logits.shape[-1]),
                                              float("-inf"))], -1)


class _Decoder:
    """One model stepping through a left-padded batch: KV cache when the model returns one, else the
    whole prefix again each step. `logits` (B, V) are the next-token logits."""

    def __init__(self, model, ids, attn, vocab_size: int):
        self.model, self.vocab_size = model, vocab_size
        self.ids, self.attn = ids, attn
        # transformers 5 renamed past_key_values to cache (in the forward and its output)
        self.cache_key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.past = None
        self.logits = self._forward(ids, attn, None)

    def _forward(self, ids, attn, past):
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        pos = pos[:, -ids.shape[1]:]
        out = self.model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1,
                         **{self.cache_key: past})
        self.past = getattr(out, self.cache_key, None)
        return to_vocab(out.logits[:, -1].float(), self.vocab_size)

    def step(self, token: torch.Tensor) -> None:
        self.ids = torch.cat([self.ids, token[:, None]], 1)
        self.attn = torch.cat([self.attn, torch.ones_like(self.attn[:, :1])], 1)
        if self.past is not None:
            self.logits = self._forward(token[:, None], self.attn, self.past)
        else:
            self.logits = self._forward(self.ids, self.attn, None)


def checkpointing(model) -> bool:
    """Whether gradient (activation) checkpointing is on (transformers 5 calls it activation checkpointing)."""
    flag = "is_activation_checkpointing" if hasattr(model, "is_activation_checkpointing") else "is_gradient_checkpointing"
    return bool(getattr(model, flag, False))


def set_checkpointing(model, on: bool) -> None:
    name = "activation" if hasattr(model, "activation_checkpointing_enable") else "gradient"
    getattr(model, f"{name}_checkpointing_{'enable' if on else 'disable'}")()


@contextlib.contextmanager
def generating(*models):
    """Eval mode and gradient checkpointing off while generating; both restored after."""
    saved = [(m, m.training, checkpointing(m)) for m in models]
    try:
        for m, _, ckpt in saved:
            if ckpt:
                set_checkpointing(m, False)
            m.eval()
        yield
    finally:
        for m, training, ckpt in saved:
            if ckpt:
                set_checkpointing(m, True)
            m.train(training)


def sample(writer, prompts: list[list[int]], max_new_tokens: int, eos_ids: set[int], pad_id: int,
           vocab_size: int, device, generator: torch.Generator, temperature: float = 1.0, top_p: float = 1.0,
           mixer=None, mix: float = 0.0) -> tuple[list[list[int]], list[list[float]]]:
    """Continue each prompt until an EOS or max_new_tokens; returns per prompt the generated ids (with the
    EOS if one came) and the log μ of each. `mixer`: a second model mixed in with weight `mix`."""
    models = [writer] + ([mixer] if mixer is not None and mix > 0 else [])
    with generating(*models), torch.inference_mode(), autocast(torch.device(device)):
        ids, attn = left_pad(prompts, pad_id, device)
        decoders = [_Decoder(m, ids, attn, vocab_size) for m in models]
        eos = torch.tensor(sorted(eos_ids), device=device)
        done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
        tokens, logprobs = [], []
        for _ in range(max_new_tokens):
            mix_logits = decoders[1].logits if len(decoders) > 1 else None
            lmu = sampling_logprobs(decoders[0].logits, temperature, top_p, mix_logits, mix)
            y = torch.multinomial(lmu.exp(), 1, generator=generator).squeeze(-1)
            y = torch.where(done, pad_id, y)
            tokens.append(y)
            logprobs.append(lmu.gather(-1, y[:, None]).squeeze(-1))
            done = done | torch.isin(y, eos)
            if bool(done.all()):
                break
            for d in decoders:
                d.step(y)
        new = torch.stack(tokens, 1).tolist()
        lps = torch.stack(logprobs, 1).float().tolist()
    out_ids, out_lps = [], []
    for row, lp in zip(new, lps):
        stop = next((k for k, t in enumerate(row) if t in eos_ids), None)
        keep = len(row) if stop is None else stop + 1
        out_ids.append(row[:keep])
        out_lps.append(lp[:keep])
    return out_ids, out_lps


def rollout_record(prompt: list[int], new: list[int], logprobs: list[float], eos_ids: set[int]) -> dict:
    """JSON-able: ids = prompt + generated (+ the EOS, never a loss token); behaviour of the generated."""
    generated = len(new) - (1 if new and new[-1] in eos_ids else 0)
    ids = prompt + new if new else prompt + [next(iter(sorted(eos_ids)))]
    return {"ids": ids, "prompt": len(prompt), "generated": generated, "behaviour": logprobs[:generated]}


def collate_records(records: list[dict], pad_id: int, collate_fn=None) -> dict:
    """A collated batch of rollout records plus behaviour_logprobs (NaN where nothing was sampled).

    Shapes: -> input_ids, attention_mask, targets, mask (B, T) as `batches.collate`, behaviour_logprobs (B, T)
    """
    examples = [{"ids": r["ids"], "mask": [False] * r["prompt"] + [True] * r["generated"]
                 + [False] * (len(r["ids"]) - r["prompt"] - r["generated"])} for r in records]
    batch = (collate_fn or (lambda ex: batching.collate(ex, pad_id)))(examples)
    behaviour = torch.full(batch["input_ids"].shape, NO_LOGPROB, dtype=torch.float32)
    for i, r in enumerate(records):  # target k is ids[k + 1]
        behaviour[i, r["prompt"] - 1:r["prompt"] - 1 + r["generated"]] = torch.tensor(r["behaviour"])
    batch["behaviour_logprobs"] = behaviour
    return batch


class RolloutStream:
    """The wrapped BatchStream's batches on data steps, generated ones on rollout steps (`next()`), with
    `state()`/`load_state()` like the BatchStream and `last_info` (rollout_tokens, rollout_staleness) for
    the step's metrics row. `writer` writes the rollouts (the student, or the teacher for sequence-level
    KD); `mixer` is mixed into the student's sampling with weight `settings.teacher_mix` (MiniLLM)."""

    def __init__(self, base, settings, seed: int, grad_accum: int, seq_len: int, writer, eos_ids: set[int],
                 pad_id: int, vocab_size: int, device, mixer=None, collate_fn=None):
        self.base, self.settings, self.seed, self.grad_accum = base, settings, seed, grad_accum
        self.writer, self.mixer, self.eos_ids, self.pad_id = writer, mixer, set(eos_ids), pad_id
        self.vocab_size, self.device, self.collate_fn = vocab_size, torch.device(device), collate_fn
        self.max_prompt = seq_len - settings.max_new_tokens
        self.calls = 0
        self.buffer: dict[int, dict] = {}  # micro-batch index -> {"step", "uses", "records"}
        self._info: dict = {}
        self._said_cut = False

    @property
    def last_info(self) -> dict:
        """The last step's metrics fields: rollout_tokens (generated loss tokens) and rollout_staleness
        (mean age in steps of its generated batches; None on a data step)."""
        return {k: v for k, v in self._info.items() if not k.startswith("_")}

    def next(self) -> dict:
        step, micro = divmod(self.calls, self.grad_accum)
        self.calls += 1
        if micro == 0:
            self._info = {"rollout_tokens": 0, "rollout_staleness": None, "_batches": 0}
        if not is_rollout_step(self.seed, step, self.settings.lmbda):
            return self.base.next()
        entry = self.buffer.get(micro)
        if entry is None or entry["uses"] >= self.settings.buffer:
            entry = self.buffer[micro] = {"step": step, "uses": 0, "records": self._generate(step, micro)}
        entry["uses"] += 1
        batch = collate_records(entry["records"], self.pad_id, self.collate_fn)
        tokens = int(batch["mask"].sum())
        if tokens == 0:
            print(f"rollout at step {step + 1}: every sequence ended at once (only EOS); this batch has 0 loss "
                  "tokens and adds nothing to the loss", flush=True)
        staleness = step - entry["step"]
        info, n = self._info, self._info["_batches"]
        info["rollout_staleness"] = staleness if n == 0 else (info["rollout_staleness"] * n + staleness) / (n + 1)
        info["rollout_tokens"] += tokens
        info["_batches"] = n + 1
        return batch

    def _generate(self, step: int, micro: int) -> list[dict]:
        data = self.base.next()
        prompts, cut = batch_prompts(data, self.settings.prompt_tokens, self.max_prompt)
        if cut and not self._said_cut:
            print(f"rollout: {cut} of {len(prompts)} prompts were longer than train.seq_len - "
                  f"rollout.max_new_tokens = {self.max_prompt} tokens and were cut from the left "
                  "(said once)", flush=True)
            self._said_cut = True
        generator = torch.Generator(device=self.device).manual_seed(
            (self.seed * 1_000_003 + step) * 131 + micro)
        s = self.settings
        new, logprobs = sample(self.writer, prompts, s.max_new_tokens, self.eos_ids, self.pad_id, self.vocab_size,
                               self.device, generator, s.temperature, s.top_p, self.mixer, s.teacher_mix)
        return [rollout_record(p, n, lp, self.eos_ids) for p, n, lp in zip(prompts, new, logprobs)]

    def state(self) -> dict:
        return {"data": self.base.state(), "calls": self.calls,
                "buffer": {str(k): v for k, v in self.buffer.items()}}

    def load_state(self, state: dict) -> None:
        if "calls" not in state:  # a BatchStream's state (the run was off-policy until now)
            self.base.load_state(state)
            return
        self.base.load_state(state["data"])
        self.calls = state["calls"]
        self.buffer = {int(k): v for k, v in state["buffer"].items()}


def eos_ids_of(tokenizer, *models) -> set[int]:
    """The tokenizer's EOS and every EOS the models' generation configs name."""
    ids = {tokenizer.eos_token_id} - {None}
    for m in models:
        eos = getattr(getattr(m, "generation_config", None), "eos_token_id", None)
        ids |= set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
    return ids


def teacher_model(source):
    """The source's model, for the teacher to write or mix into rollouts; a cache has none."""
    model = source.rollout_model()
    if model is None or not source.can_score_new_text:
        raise ConfigError(f"rollout.source=teacher and rollout.teacher_mix need a local teacher model that "
                          f"writes text (teacher.model); this run's teacher ({source.against}) has none: use "
                          "rollout.source=student with rollout.teacher_mix=0")
    return model


def build_stream(cfg, base, student, source, device):
    """`base` itself when the run is off-policy (rollout.source=data or lmbda=0), else a RolloutStream."""
    r = cfg.rollout
    if not r.on_policy:
        return base
    from kdistill.models.heads import head_weight

    if not source.can_score_new_text:
        raise ConfigError(f"rollout.source={r.source}: this run's teacher ({source.against}) cannot score new "
                          "text; on-policy distillation needs a live teacher")
    writer = student if r.source == "student" else teacher_model(source)
    mixer = teacher_model(source) if r.source == "student" and r.teacher_mix > 0 else None
    pad = source.tokenizer.pad_token_id
    return RolloutStream(base, r, cfg.train.seed, cfg.train.grad_accum, cfg.train.seq_len, writer,
                         eos_ids_of(source.tokenizer, writer), pad, head_weight(student).shape[0], device,
                         mixer, collate_fn=lambda examples: source.collate(examples, pad))
