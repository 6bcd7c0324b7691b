"""The student as its own teacher: an EMA (exponential moving average) shadow of its trainable weights.

    {name: ema, kind: ema, update_rate: 0.01, every: 1}          # an entry of teacher.sources

After every `every` optimizer steps: shadow ← (1 − update_rate)·shadow + update_rate·weights, in fp32,
for the trainable parameters only (a LoRA student: its adapters; the frozen base is shared with the
student, not copied). The shadow starts as a copy of the initialised student; it is saved with each
checkpoint (`state_dict`), so a resumed run continues with the same shadow. Feature terms compare the
student's layers with the shadow's (`signal_and_activations`; from_init and span pair layer s with shadow
layer s). Under fsdp every process keeps a whole shadow and gathers the student's shards to update it.
"""
from __future__ import annotations

import copy

import torch

from kdistill.data import batches as batching
from kdistill.data.load import load_examples
from kdistill.sources.base import Quiet
from kdistill.sources.model import signal_with_activations, teacher_signal


class EmaSource(Quiet):
    static = False  # its signal changes with every update of the shadow
    can_score_new_text = True
    provides_activations = True
    init_model = None

    def __init__(self, name: str, update_rate: float, every: int):
        self.against, self.update_rate, self.every = name, update_rate, every
        self.model, self.tokenizer, self._pairs = None, None, []

    def attach_student(self, student) -> None:
        """Copy the student once; trainable tensors get their own fp32 copies, frozen ones are shared."""
        trainable = {n for n, p in student.named_parameters() if p.requires_grad}
        frozen = {n: p for n, p in student.named_parameters() if not p.requires_grad}
        memo = {id(p): p for p in frozen.values()}  # deepcopy reuses these: the frozen base is not copied
        self.model = copy.deepcopy(student, memo).eval()
        own = dict(self.model.named_parameters())
        self._pairs = []
        for name, p in student.named_parameters():
            if name in trainable:
                shadow = own[name]
                shadow.data = p.detach().float().clone()
                shadow.requires_grad_(False)
                self._pairs.append((name, shadow, p))

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @torch.no_grad()
    def after_step(self, student, step: int) -> None:
        """The shadow moves toward the student's weights as they are now: looked up by name, since fsdp
        replaces the student's parameters by sharded ones (gathered here a tensor at a time, on every process)."""
        if step % self.every:
            return
        now = dict(student.named_parameters())
        for name, shadow, _ in self._pairs:
            p = now[name].detach()
            p = p.full_tensor() if hasattr(p, "full_tensor") else p
            shadow.mul_(1 - self.update_rate).add_(p.float(), alpha=self.update_rate)

    def signal(self, batch: dict, vocab_size: int):
        return teacher_signal(self.model, batch, vocab_size)

    def signal_and_activations(self, batch: dict, vocab_size: int, request: dict):
        """The shadow's signal and activations (the student's own layers, averaged), from one forward of the
        shadow under no_grad: never the live student's."""
        return signal_with_activations(self.model, batch, vocab_size, request)

    def load_examples(self, cfg, device) -> list[dict]:
        """data.path read with the tokenizer it was given (teacher-written data needs a teacher beside it)."""
        return load_examples(cfg, None, self.tokenizer, "", device)

    def collate(self, examples: list[dict], pad_id: int) -> dict:
        return batching.collate(examples, pad_id)

    def rollout_model(self):
        return self.model

    def references(self) -> list:
        return [self]

    def final_reference(self, cfg, device, dtype):
        return None

    def identity(self) -> dict:
        return {"kind": "ema", "name": self.against, "update_rate": self.update_rate, "every": self.every}

    def state_dict(self) -> dict:
        return {name: shadow for name, shadow, _ in self._pairs}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for name, shadow, _ in self._pairs:
                shadow.copy_(state[name])
