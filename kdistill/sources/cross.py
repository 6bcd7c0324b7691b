"""A teacher with another tokenizer than the student's: `student.tokenizer=SPEC` (or a pretrained student
with its own tokenizer). It wraps the teacher's model source and speaks the student's tokens to the loop.

    student: {tokenizer: data/student_tokenizer}        # a folder, a .gguf, or default (SmolLM2's)
    loss: {terms: [{kind: hybrid, top_k: 100}, {kind: ce, weight: 0.1}]}

`load_examples` renders each record with both tokenizers (`data/pairs.py`: the response's bytes grouped
across the two token sequences); `collate` pads both sides and marks every row with its group;
`signal` runs the teacher on its own tokens and returns a `CrossSignal`: per group, the teacher's
distribution at the group's first token, the log-probability of its later tokens and its first id. The
objective (`losses/cross/objective.py`) and held-out metrics (`evaluation/cross_metrics.py`) take it from
there. Vocabulary entries are paired by equal strings once, here (one tokenizer: id with id; the EOS of
each side with the other's).
"""
from __future__ import annotations

import logging

import torch

from kdistill.cache import manifest as M
from kdistill.data import batches as batching
from kdistill.data.files import read_records
from kdistill.data.pairs import render_pair, render_pairs
from kdistill.data.token_bytes import vocab_bytes
from kdistill.losses.cross.alignment import identity_pairs, string_pairs
from kdistill.losses.cross.groups import CrossSignal
from kdistill.losses.signals import DenseSignal
from kdistill.models.heads import final_hidden, head_weight, logits_from_hidden_ok, unwrap
from kdistill.sources.base import Quiet

log = logging.getLogger("kdistill")


def vocabulary_pairs(student_tok, teacher_tok, student_rows: int, teacher_rows: int):
    """(student ids, teacher ids) of equal strings, EOS with EOS; id with id for one tokenizer."""
    if M.tokenizer_fingerprint(student_tok) == M.tokenizer_fingerprint(teacher_tok):
        return identity_pairs(student_rows, teacher_rows)
    s, t = string_pairs(vocab_bytes(student_tok, student_rows), vocab_bytes(teacher_tok, teacher_rows))
    s_eos, t_eos = student_tok.eos_token_id, teacher_tok.eos_token_id
    if s_eos is not None and t_eos is not None:
        keep = (s != s_eos) & (t != t_eos)
        s, t = torch.cat([s[keep], torch.tensor([s_eos])]), torch.cat([t[keep], torch.tensor([t_eos])])
    return s, t


def load_student_tokenizer(spec: str):
    """`student.tokenizer`: a folder with a tokenizer, a .gguf (its tokenizer is read, not the weights), or
    `default` (the embedded SmolLM2's). ModelError naming the key when it cannot be read."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from kdistill.base.errors import ModelError
    from kdistill.models.teacher import default_teacher_gguf

    gguf = default_teacher_gguf() if spec == "default" else Path(spec).expanduser()
    try:
        if str(gguf).endswith(".gguf"):
            return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        return AutoTokenizer.from_pretrained(str(gguf))
    except (OSError, ValueError, TypeError) as e:
        raise ModelError(f"student.tokenizer: cannot read a tokenizer from {spec!r} ({e}); give a folder with "
                         "tokenizer.json, a .gguf file, or `default`") from None


# a batch's keys for one teacher's side (several teachers: each under "NAME/KEY", `CrossTokenizerSource.own`)
TEACHER_KEYS = ("teacher_input_ids", "teacher_attention_mask", "teacher_targets", "student_group",
                "teacher_group", "groups")


def teacher_side(sides: list[dict], student_shape, teacher_pad: int) -> dict:
    """One teacher's tokens and each row's group for a batch, from each example's {"teacher_ids", "groups"}.

    Shapes: student_shape (B, T) -> teacher_input_ids / teacher_attention_mask / teacher_targets (B, Tt),
    student_group (B, T), teacher_group (B, Tt) long (the group within its example, -1 outside),
    groups (B,) long (groups per example)
    """
    length = max(len(e["teacher_ids"]) for e in sides) - 1
    b = len(sides)
    t_ids = torch.full((b, length), teacher_pad, dtype=torch.long)
    targets = torch.full((b, length), teacher_pad, dtype=torch.long)
    t_mask, t_group = torch.zeros(b, length, dtype=torch.long), torch.full((b, length), -1, dtype=torch.long)
    s_group = torch.full(tuple(student_shape), -1, dtype=torch.long)
    for i, e in enumerate(sides):
        n = len(e["teacher_ids"]) - 1
        t_ids[i, :n] = torch.tensor(e["teacher_ids"][:-1])
        targets[i, :n] = torch.tensor(e["teacher_ids"][1:])
        t_mask[i, :n] = 1
        for k, (a, b_, c, d) in enumerate(e["groups"]):
            s_group[i, a - 1:b_ - 1] = k
            t_group[i, c - 1:d - 1] = k
    return {"teacher_input_ids": t_ids, "teacher_attention_mask": t_mask, "teacher_targets": targets,
            "student_group": s_group, "teacher_group": t_group,
            "groups": torch.tensor([len(e["groups"]) for e in sides])}


def collate_pairs(examples: list[dict], pad_id: int, teacher_pad: int) -> dict:
    """The student's batch plus the teacher's side (`teacher_side`) and each example's response bytes.

    Shapes: -> student keys (B, T), the teacher keys of `teacher_side`, bytes (B,) long
    """
    batch = batching.collate(examples, pad_id)
    return {**batch, **teacher_side(examples, batch["mask"].shape, teacher_pad),
            "bytes": torch.tensor([e["bytes"] for e in examples])}


def render_aligned(record: dict, student_tok, teachers: dict, seq_len: int, fmt: str, text_field: str,
                   where: str) -> dict | None:
    """One record read by the student's tokenizer and by each of several teachers' (`teachers`: name ->
    (tokenizer, most teacher tokens)): {"ids", "mask", "bytes"} as for one teacher, plus "pairs": name ->
    {"teacher_ids", "groups"}. All sides keep the same student tokens: when a side would cut the response
    elsewhere, every side is cut at the last student token that ends a group on all of them (the EOS only
    when no side is cut). None when nothing of the response fits. No teachers: the student's tokens alone.
    """
    sides = teachers or {"": (student_tok, seq_len)}

    def render(length: int) -> dict | None:
        made = {name: render_pair(record, student_tok, tok, length, limit, fmt, text_field, where)
                for name, (tok, limit) in sides.items()}
        return None if any(e is None for e in made.values()) else made

    made = render(seq_len)
    if made is not None and len({len(e["ids"]) for e in made.values()}) > 1:  # cut apart: cut all alike
        start = next(iter(made.values()))["groups"][0][0]  # the first response token
        shortest = min(len(e["ids"]) for e in made.values())
        ends = set.intersection(*({g[1] for g in e["groups"]} for e in made.values()))
        cut = max((end for end in ends if end <= shortest), default=start)
        made = render(cut - 1) if cut > start else None  # a budget of `cut` ids keeps the groups up to it
    if made is None or len({tuple(e["ids"]) for e in made.values()}) > 1:
        return None
    first = next(iter(made.values()))
    pairs = {name: {"teacher_ids": e["teacher_ids"], "groups": e["groups"]} for name, e in made.items()}
    return {"ids": first["ids"], "mask": first["mask"], "bytes": first["bytes"], "pairs": pairs if teachers else {}}


@torch.no_grad()
def group_signal(teacher, batch: dict, pairs, vocab_size: int, chunk: int = 256) -> CrossSignal:
    """The teacher's side of every group of the batch (see CrossSignal). Shapes: batch as `collate_pairs`"""
    offsets = batch["groups"].cumsum(0) - batch["groups"]
    s_local, t_local = batch["student_group"], batch["teacher_group"]
    group_of = torch.where(s_local >= 0, s_local + offsets[:, None], -1).reshape(-1)
    t_flat = torch.where(t_local >= 0, t_local + offsets[:, None], -1).reshape(-1)
    rows = (t_flat >= 0).nonzero().squeeze(-1)
    groups = t_flat[rows]
    starts = torch.ones_like(groups, dtype=torch.bool)
    starts[1:] = groups[1:] != groups[:-1]
    first, later = rows[starts], rows[~starts]
    ids, mask = batch["teacher_input_ids"], batch["teacher_attention_mask"]
    targets = batch["teacher_targets"].reshape(-1)
    if logits_from_hidden_ok(teacher):
        hidden = final_hidden(teacher, ids, mask).reshape(-1, head_weight(teacher).shape[1])
        weight = head_weight(teacher)
        signal = DenseSignal.from_hidden(hidden[first], weight)
        logits_of = lambda r: (hidden[r].to(weight.dtype) @ weight.T).float()  # noqa: E731
    else:
        logits = teacher(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
        logits = logits.reshape(-1, logits.shape[-1])
        signal = DenseSignal(logits=logits[first])
        logits_of = lambda r: logits[r]  # noqa: E731
    rest = torch.zeros(len(first), dtype=torch.float32, device=ids.device)
    local = starts.cumsum(0) - 1
    later_groups = local[~starts]
    for i in range(0, len(later), chunk):
        r = later[i:i + chunk]
        lp = logits_of(r).log_softmax(-1).gather(-1, targets[r][:, None]).squeeze(-1)
        rest.index_add_(0, later_groups[i:i + chunk], lp)
    s_pairs, t_pairs = pairs
    return CrossSignal(signal, rest, targets[first], group_of, s_pairs.to(ids.device), t_pairs.to(ids.device),
                       vocab_size, len(rows))


class CrossTokenizerSource(Quiet):
    """The teacher (a ModelSource) read through its own tokenizer, signals given per aligned group.

    `name`: one of several teachers (`sources/multi.py`): its metrics are against `name`, and its side of
    a batch is under "NAME/KEY" (of `TEACHER_KEYS`), of an example under example["pairs"][NAME]."""

    against = "teacher"
    static = True
    can_score_new_text = False  # text in the student's tokens would need reading again by the teacher
    provides_activations = False

    def __init__(self, inner, student_tokenizer, spec: str = "", copy_embeddings: bool = False,
                 name: str | None = None):
        self.inner, self.tokenizer, self.spec, self.copy_embeddings = inner, student_tokenizer, spec, copy_embeddings
        if student_tokenizer.pad_token_id is None:
            student_tokenizer.pad_token = student_tokenizer.eos_token
        self.teacher_tokenizer = inner.tokenizer
        self._pairs = None
        self.name = name
        if name is not None:
            self.against = name

    def own(self, batch: dict) -> dict:
        """The batch with this teacher's side under the plain keys (one teacher: the batch itself)."""
        if self.name is None:
            return batch
        return {**batch, **{k: batch[f"{self.name}/{k}"] for k in TEACHER_KEYS}}

    def side(self, example: dict) -> dict:
        """This teacher's {"teacher_ids", "groups"} of an example."""
        return example if self.name is None else example["pairs"][self.name]

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def init_model(self):
        return self.inner.model

    def pairs(self, student_rows: int):
        """The vocabulary pairing for a student head of `student_rows` rows, built once."""
        if self._pairs is None or self._pairs[0] != student_rows:
            made = vocabulary_pairs(self.tokenizer, self.teacher_tokenizer, student_rows, self.inner.vocab_size)
            self._pairs = (student_rows, made)
            if made[0].numel() == 0:
                log.warning("the student's and the teacher's tokenizers share no strings: loss kind hybrid "
                            "falls back to uld only")
        return self._pairs[1]

    def attach_student(self, student) -> None:
        """A LLaMA student with init=teacher starts from the teacher's embeddings of matching strings."""
        if self.copy_embeddings:
            from kdistill.students.own_tokenizer import copy_matching_embeddings

            s_ids, t_ids = self.pairs(int(head_weight(student).shape[0]))
            n = copy_matching_embeddings(student, self.inner.model, s_ids, t_ids)
            log.info("student embeddings: %d of %d rows from the teacher's rows of the same strings", n,
                     head_weight(student).shape[0])

    def calibration_batch(self, examples: list[dict], pad_id: int) -> dict:
        """The teacher's own tokens of `examples` (padded with the teacher's pad id, not `pad_id`)."""
        own = [{"ids": self.side(e)["teacher_ids"], "mask": [True] * len(self.side(e)["teacher_ids"])}
               for e in examples]
        return batching.collate(own, self.teacher_tokenizer.pad_token_id)

    def load_examples(self, cfg, device) -> list[dict]:
        records = read_records(cfg.data.path, cfg.data.split, cfg.data.max_records)
        return render_pairs(records, self.tokenizer, self.teacher_tokenizer, cfg.train.seq_len,
                            self.teacher_limit(cfg.train.seq_len), cfg.data.format, cfg.data.text_field,
                            cfg.data.path)

    def collate(self, examples: list[dict], pad_id: int) -> dict:
        return collate_pairs(examples, pad_id, self.teacher_tokenizer.pad_token_id)

    def signal(self, batch: dict, vocab_size: int) -> CrossSignal:
        return group_signal(self.inner.model, self.own(batch), self.pairs(vocab_size), vocab_size)

    def references(self) -> list:
        return [self]

    def final_reference(self, cfg, device, dtype):
        return CrossReference(self)

    def identity(self) -> dict:
        return {**self.inner.identity(), "student_tokenizer": self.spec,
                "student_tokenizer_sha256": M.tokenizer_fingerprint(self.tokenizer)}

    def teacher_limit(self, seq_len: int) -> int:
        """Most teacher tokens of one example: its positions, at most 4 x train.seq_len."""
        limit = getattr(unwrap(self.inner.model).config, "max_position_embeddings", None) or 4 * seq_len
        return min(limit, 4 * seq_len)


class CrossReference:
    """The teacher for the final comparison: its model, folder and own tokenizer; signals per group."""

    def __init__(self, source: CrossTokenizerSource):
        self.source, self.model, self.folder = source, source.inner.model, source.inner.folder
        self.against, self.tokenizer = source.against, source.teacher_tokenizer
        self.can_score_new_text = False  # the exposure metrics score one model's text with the other's tokens
        self.static = True

    def signal(self, batch: dict, vocab_size: int):
        return self.source.signal(batch, vocab_size)
