"""The live teacher model as a source: it scores any text, on the fly, under no_grad."""
from __future__ import annotations

import torch

from kdistill.data import batches as batching
from kdistill.data.load import load_examples
from kdistill.data.packing import model_inputs
from kdistill.losses import DenseSignal
from kdistill.models.activations import capture
from kdistill.models.heads import final_hidden, head_weight, logits_from_hidden_ok, unwrap
from kdistill.models.teacher import load_teacher
from kdistill.sources.base import Quiet


def load_from_config(cfg, device, dtype):
    """(model, tokenizer, folder) for cfg.teacher, with every loading option."""
    t = cfg.teacher
    return load_teacher(t.model, device, dtype, t.trust_remote_code, t.load_in, max_memory=t.max_memory,
                        offload_dir=t.offload_dir, allow_pickle=t.allow_pickle)


@torch.no_grad()
def teacher_signal(teacher, batch: dict, vocab_size: int) -> DenseSignal:
    """The teacher's signal on the student's vocabulary (rows 0..vocab_size-1).

    Rows the teacher has beyond the student's (a padded teacher vocabulary) are dropped; rows the student
    has beyond the teacher's get -inf teacher logits, which every divergence treats as outside the
    teacher's support. Logits stay unmaterialised (hidden + weight) when the head allows it (a plain
    linear head whose weight is in memory); otherwise they are the model's own forward logits.
    Shapes: batch input_ids (B, T) -> signal over (B, T, vocab_size)
    """
    inputs = model_inputs(batch, teacher)  # packed rows: block mask and position ids (data/packing.py)
    if logits_from_hidden_ok(teacher):
        hidden = final_hidden(teacher, **inputs)
        weight = head_weight(teacher)
        if weight.shape[0] >= vocab_size:
            return DenseSignal.from_hidden(hidden, weight[:vocab_size])
        logits = (hidden @ weight.T).float()
    else:
        logits = teacher(**inputs, use_cache=False).logits.float()
    if logits.shape[-1] >= vocab_size:
        return DenseSignal(logits=logits[..., :vocab_size])
    pad = logits.new_full((*logits.shape[:-1], vocab_size - logits.shape[-1]), float("-inf"))
    return DenseSignal(logits=torch.cat([logits, pad], dim=-1))


@torch.no_grad()
def signal_with_activations(model, batch: dict, vocab_size: int, request: dict) -> tuple:
    with capture(model, request) as found:
        signal = teacher_signal(model, batch, vocab_size)
    return signal, found


class ModelSource(Quiet):
    """A frozen teacher model. Build with `ModelSource.load(cfg, device, dtype)` or from a loaded model."""

    against = "teacher"
    static = True  # its signal for a batch never changes (held-out signals can be kept)
    can_score_new_text = True
    provides_activations = True

    def __init__(self, model, tokenizer, folder, spec: str = ""):
        self.model, self.tokenizer, self.folder, self.spec = model, tokenizer, folder, spec
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def load(cls, cfg, device, dtype) -> "ModelSource":
        model, tokenizer, folder = load_from_config(cfg, device, dtype)
        return cls(model, tokenizer, folder, cfg.teacher.model)

    @property
    def vocab_size(self) -> int:
        return int(unwrap(self.model).get_output_embeddings().weight.shape[0])

    @property
    def init_model(self):
        return self.model

    def load_examples(self, cfg, device) -> list[dict]:
        return load_examples(cfg, self.model, self.tokenizer, self.folder, device)

    def collate(self, examples: list[dict], pad_id: int) -> dict:
        return batching.collate(examples, pad_id)

    def rollout_model(self):
        return self.model

    def signal(self, batch: dict, vocab_size: int) -> DenseSignal:
        return teacher_signal(self.model, batch, vocab_size)

    def signal_and_activations(self, batch: dict, vocab_size: int, request: dict):
        """The signal and the activations `request` names ({layer: names}, `activations.capture`), both
        from the same forward under no_grad."""
        return signal_with_activations(self.model, batch, vocab_size, request)

    def references(self) -> list:
        return [self]

    def final_reference(self, cfg, device, dtype) -> "ModelSource":
        return self

    def identity(self) -> dict:
        if not hasattr(self, "_identity"):  # hashing the weight files takes a second or two: once
            from kdistill.cache.manifest import weights_fingerprint

            self._identity = {"kind": "model", "spec": self.spec,
                              "weights_sha256": weights_fingerprint(self.folder, self.model)}
        return self._identity
