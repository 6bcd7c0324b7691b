"""`TeacherSource`: everything a run asks of its teacher, whatever the teacher is; and `Quiet`, the members
of a source with nothing of its own to do.

A run opens its source once (`sources.open_source`); the training loop, the data stream, the student's
initialisation and every evaluation talk to it only through the members below, so a new kind of teacher
is a new class that has them all (tests/sources/test_protocol.py checks each class, signatures included).

| class                | the teacher                                    | calibration_batch    | rollout_model |
|----------------------|------------------------------------------------|----------------------|---------------|
| ModelSource          | a frozen model (`teacher.model`)               | the student's batch  | the teacher   |
| CacheSource          | a cache's stored signals (`teacher.cache`)     | the student's batch  | None          |
| MultiSource          | several combined (`teacher.sources`; each in   | the first model's    | None          |
|                      | its own tokens with `student.tokenizer`)       | tokens               |               |
| EmaSource            | an EMA of the student (in `teacher.sources`)   | the student's batch  | its shadow    |
| CrossTokenizerSource | read in its own tokens (`student.tokenizer`)   | the teacher's tokens | None          |
| ServedSource         | on an inference server (`teacher.server`)      | the student's batch  | None          |
| ReuseSource          | a model whose top-K per row is kept at its     | the model's          | the model     |
|                      | first visit (`teacher.reuse_topk`)             |                      |               |
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from kdistill.base.errors import ConfigError
from kdistill.data import batches as batching


@runtime_checkable
class TeacherSource(Protocol):
    """What a run talks to when it needs the teacher. Batches are dicts of tensors made by `collate`;
    B batch, T time (the student's tokens), V the student's vocabulary."""

    @property
    def against(self) -> str:
        """What metrics measured against it are against: "teacher", "cache", a source's name, "mixture";
        the key of its held-out metrics (`eval_<against>_kl`, eval.json's `heldout_<against>`)."""

    @property
    def tokenizer(self):
        """The tokenizer the student reads: the teacher's, or the student's own (`student.tokenizer`)."""

    @property
    def vocab_size(self) -> int:
        """Rows of the teacher's output layer as the student sees them (the V of `signal`)."""

    @property
    def static(self) -> bool:
        """True when its signal for a batch never changes, so held-out signals can be computed once
        (False for an EMA of the student, and for several sources that include one)."""

    @property
    def can_score_new_text(self) -> bool:
        """True when `signal` scores any token ids of the student's vocabulary (a model, a teacher server);
        False when it holds signals for its own tokens only (a cache) or reads other tokens (another
        tokenizer). On-policy rollouts of the student need True; exposure metrics also need a live model."""

    @property
    def provides_activations(self) -> bool:
        """True when `signal_and_activations` can give intermediate activations (one live model)."""

    @property
    def init_model(self):
        """The model the student is initialised from (a live teacher, or one on the meta device for
        shapes only), None where there is none; dropped by `release_init`."""

    @property
    def prefetch(self) -> int:
        """Batches the run makes ahead of the step that trains on them, so their signals are on the way
        (`collate` starts them): a teacher server's latency hides behind the student's step; 0 for a local
        teacher."""

    def load_examples(self, cfg, device) -> list[dict]:
        """The run's token examples ({"ids", "mask", ...} of at most train.seq_len + 1 ids); a cache
        holds its own, another tokenizer adds the teacher's tokens and the aligned groups."""

    def collate(self, examples: list[dict], pad_id: int) -> dict:
        """A batch of `examples`: input_ids, attention_mask, targets, mask (B, T), plus what `signal` needs
        (a cache's stored signal, the teacher's own tokens, each example's route)."""

    def calibration_batch(self, examples: list[dict], pad_id: int) -> dict:
        """`examples` as `init_model` reads them, for choosing and fitting the student's layers
        (`students.build_student`): input_ids, attention_mask, targets, mask (B, T'), T' the teacher's
        tokens. Every source has one: the student's batch, or the teacher's own tokens (another tokenizer)."""

    def rollout_model(self):
        """A model that can write and score new text for on-policy rollouts (`data/rollout.py`), or None
        when it has none (a cache, several sources, another tokenizer)."""

    def signal(self, batch: dict, vocab_size: int):
        """The teacher's signal at every position of `batch` on the student's vocabulary (rows
        0..vocab_size-1): a DenseSignal or SparseSignal over (B, T), a Mixture of several, or a CrossSignal
        per aligned group (losses/signals.py: each says its `form`)."""

    def signal_and_activations(self, batch: dict, vocab_size: int, request: dict) -> tuple:
        """(signal, {layer: {name: tensor}}) from one forward, the activations `request` names
        ({layer: names}, `models.activations.capture`); ConfigError for a source without activations."""

    def references(self) -> list:
        """What held-out metrics are measured against during training: itself, and maybe more (the real
        teacher beside its cache, each of several teachers and their mixture). Each has `against`,
        `static` and `signal(batch, vocab_size)`."""

    def final_reference(self, cfg, device, dtype):
        """The teacher of the final comparison, or None (a cache whose teacher does not load). It has
        `against`, `static`, `can_score_new_text`, `signal`, and the live `model`, its `folder` and
        `tokenizer` (the teacher's own)."""

    def identity(self) -> dict:
        """A JSON-able name and fingerprint, recorded in checkpoints; a resumed run must match it."""

    def state_dict(self) -> dict:
        """Its own tensors for checkpoints (name -> tensor; {} for none)."""

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` gave."""

    def attach_student(self, student) -> None:
        """Called once the student exists (an EMA copies it, another tokenizer copies embeddings)."""

    def after_step(self, student, step: int) -> None:
        """Called after each optimizer step `step` (an EMA moves its shadow)."""

    def release_init(self) -> None:
        """Free what only the student's initialisation needed (a cache's teacher model)."""


def no_activations(source) -> ConfigError:
    """The refusal of a source that holds output signals only (a cache, several teachers combined)."""
    return ConfigError(f"the teacher source '{source.against}' holds the teacher's output signal only, no "
                       "hidden states or attention; hidden_*/attention_* loss terms need one live teacher model "
                       "(teacher.model without teacher.cache or teacher.sources)")


class Quiet:
    """Defaults for a source with no state, nothing to do between steps, the student's tokens and no
    model of its own for rollouts."""

    prefetch = 0

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def attach_student(self, student) -> None:
        pass

    def after_step(self, student, step: int) -> None:
        pass

    def release_init(self) -> None:
        pass

    def calibration_batch(self, examples: list[dict], pad_id: int) -> dict:
        return batching.collate(examples, pad_id)

    def rollout_model(self):
        return None

    def signal_and_activations(self, batch: dict, vocab_size: int, request: dict):
        raise no_activations(self)
