"""A teacher cache as a source: the stored top-k (or sampled) signal of the cache's own tokens.

Before step 0 the cache is opened whole (manifest, checksums, every shard decoded) and checked against
the run: train.seq_len, the data settings (and for a data file, the fingerprint of its tokens), and the
tokenizer of any teacher loaded. The student is initialised as usual: student.init=teacher loads
`teacher.model` for the initialisation only (its tokenizer must be the cache's); student.init=random
needs no teacher at all (shapes from the cache's teacher_config.json, on the meta device).

Metrics against this source are against the stored distribution (top-k and the rest bucket: a lower
bound of the full-vocabulary KL) and carry "cache" in their keys. When the teacher loaded for the
initialisation is the one that wrote the cache, it is also a reference: its held-out signal is computed
once before it is freed, so every evaluation reports KL to the real teacher too. At the end the usual
comparison runs against the real teacher when `teacher.model` loads with the cache's tokenizer.
"""
from __future__ import annotations

import logging

import torch

from kdistill.base.errors import KdistillError
from kdistill.cache import manifest as M
from kdistill.cache.reader import TeacherCache, collate, open_cache
from kdistill.data.load import load_examples
from kdistill.sources.base import Quiet
from kdistill.sources.model import ModelSource, load_from_config

log = logging.getLogger("kdistill")


def open_for_training(cfg) -> TeacherCache:
    """The cache, fully verified and checked against the run's seq_len and data settings."""
    cache = open_cache(cfg.teacher.cache)
    m, where = cache.manifest, f"teacher cache {cfg.teacher.cache}"
    if cfg.train.seq_len != m["seq_len"]:
        raise M.CacheMismatch(f"{where} was written with seq_len {m['seq_len']}, this run has train.seq_len="
                              f"{cfg.train.seq_len}; set train.seq_len={m['seq_len']} or rewrite the cache")
    source, mine = m["data"]["source"], M.data_source(cfg)
    if source != mine:
        diff = [f"{k}: cache {source.get(k)!r}, run {mine.get(k)!r}" for k in sorted(set(source) | set(mine))
                if source.get(k) != mine.get(k)]
        raise M.CacheMismatch(f"{where} holds other data than this run's data settings ({'; '.join(diff)}); set "
                              "data.* as when the cache was written, or rewrite the cache for this data")
    if cfg.data.path:
        examples = load_examples(cfg, None, cache.load_tokenizer(), "", torch.device("cpu"))
        if M.data_fingerprint(examples) != m["data"]["sha256"]:
            raise M.CacheMismatch(f"data.path {cfg.data.path} has changed since {where} was written (its token "
                                  "ids differ); rewrite the cache with `kdistill cache --overwrite`")
    if m["signal"]["temperature"] != 1.0:
        log.warning("%s stores the teacher at temperature %s; each loss term's temperature applies on top of it",
                    where, m["signal"]["temperature"])
    return cache


def check_tokenizer(cache: TeacherCache, tokenizer, what: str) -> None:
    if M.tokenizer_fingerprint(tokenizer) != cache.manifest["tokenizer"]["sha256"]:
        raise M.CacheMismatch(f"{what} has another tokenizer than teacher cache {cache.folder} (written by teacher "
                              f"{cache.manifest['teacher']['spec']!r}); its token ids would mean other tokens. Use "
                              "that teacher (or its tokenizer's family), or rewrite the cache with this one")


def init_teacher(cache: TeacherCache, cfg, device, dtype) -> tuple:
    """(model for the student's initialisation, its folder or None, whether it wrote the cache). A
    teacher.model named beside the cache is checked to read the cache's tokens whatever student.init is."""
    if cfg.student.init != "teacher":
        from transformers import AutoModelForCausalLM

        if cfg.teacher.model != "default":  # named on purpose: it must be the cache's teacher's family
            from kdistill.models.teacher import load_tokenizer_and_config

            try:
                named, _, _ = load_tokenizer_and_config(cfg.teacher.model, cfg.teacher.trust_remote_code)
            except KdistillError as e:  # not here: the run trains on the cache alone (and says so at the end)
                log.info("teacher.model=%s is not here (%s); training on the cache alone", cfg.teacher.model, e)
            else:
                check_tokenizer(cache, named, f"teacher.model={cfg.teacher.model}")

        with torch.device("meta"):  # shapes only: no weights, no memory, no compute
            return AutoModelForCausalLM.from_config(cache.teacher_config()), None, False
    try:
        teacher, own, folder = load_from_config(cfg, device, dtype)
    except KdistillError as e:
        raise type(e)(f"{e} (with teacher.cache, teacher.model is loaded only to initialise the student; "
                      "set student.init=random to train without it)") from e
    check_tokenizer(cache, own, f"teacher.model={cfg.teacher.model}")
    wrote_it = M.weights_fingerprint(folder, teacher) == cache.manifest["teacher"]["weights_sha256"]
    if not wrote_it:
        log.warning("teacher.model=%s is not the teacher that wrote %s (%s); the student starts from its weights",
                    cfg.teacher.model, cache.folder, cache.manifest["teacher"]["spec"])
    return teacher, folder, wrote_it


class CacheSource(Quiet):
    """Signals read from a verified teacher cache; the teacher itself never runs in the loop."""

    against = "cache"
    static = True  # its signal for a batch never changes (held-out signals can be kept)
    can_score_new_text = False
    provides_activations = False

    def __init__(self, cache: TeacherCache, init_model, init_folder, init_wrote_cache: bool):
        self.cache, self.tokenizer = cache, cache.load_tokenizer()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.init_model, self._init_folder, self._init_wrote_cache = init_model, init_folder, init_wrote_cache

    @classmethod
    def open(cls, cfg, device, dtype) -> "CacheSource":
        cache = open_for_training(cfg)  # checked before any model loads
        return cls(cache, *init_teacher(cache, cfg, device, dtype))

    @property
    def vocab_size(self) -> int:
        return self.cache.vocab_size

    def load_examples(self, cfg, device) -> list[dict]:
        return self.cache.examples

    def collate(self, examples: list[dict], pad_id: int) -> dict:
        return collate(examples, pad_id)

    signal_key = "signal"  # where collate puts this cache's signal (several caches: one key each)

    def signal(self, batch: dict, vocab_size: int):
        return batch[self.signal_key]

    def references(self) -> list:
        """This cache, and the real teacher while it is loaded for the initialisation and wrote the cache."""
        if self.init_model is not None and self._init_wrote_cache:
            return [self, ModelSource(self.init_model, self.tokenizer, self._init_folder, self.cache.manifest
                                      ["teacher"]["spec"])]
        return [self]

    def final_reference(self, cfg, device, dtype) -> ModelSource | None:
        """The real teacher when teacher.model loads with the cache's tokenizer, else None (and why)."""
        try:
            model, tokenizer, folder = load_from_config(cfg, device, dtype)
            check_tokenizer(self.cache, tokenizer, f"teacher.model={cfg.teacher.model}")
        except KdistillError as e:
            log.warning("no teacher to compare with (%s); eval.json holds metrics against the cached distribution", e)
            return None
        return ModelSource(model, tokenizer, folder, cfg.teacher.model)

    def identity(self) -> dict:
        m = self.cache.manifest
        return {"kind": "cache", "folder": str(self.cache.folder), "data_sha256": m["data"]["sha256"],
                "teacher_weights_sha256": m["teacher"]["weights_sha256"], "parameters": m["teacher"]["parameters"]}

    def release_init(self) -> None:
        self.init_model = None  # the teacher only initialised the student: never in the training loop
