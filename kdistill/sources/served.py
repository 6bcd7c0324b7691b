"""A teacher on an inference server (vLLM, SGLang) as a source: it never loads into the trainer.

    kdistill distill --config configs/demo.yaml teacher.server=http://127.0.0.1:8000/v1 teacher.server_model=teacher

Each training row goes to the server as token ids; its answer, the top `teacher.server_top_k` next-token
ids and log-probabilities at every position, is a SparseSignal, so every loss that trains on a cache
trains on a server (the mass outside the top K is handled by the loss term's `missing` setting, as for a
cache). Requests start when a batch is made (`collate`), and the run reads `prefetch` batches ahead, so
the server scores the next batches while the student trains on this one. `teacher.model` gives the
tokenizer and config; its weights are read only to initialise the student and for the parity check.
Teacher-written data (`data.generate`, self-instruct, chain of thought) is written by the server's
completions (sources/server_writer.py), and on-policy rollouts of the student are scored by the server like
any batch (`collate` asks, `signal` reads).

The parity check (`teacher.parity_check`, on by default) runs before training: the server's tokens for a
probe text must equal the local tokenizer's, and where the local weights load, the server's top-K
log-probabilities on probe rows are compared with a local forward (KL and top-1 agreement printed; the run
is refused above `teacher.parity_max_kl`).
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import torch

from kdistill.base.errors import ConfigError, KdistillError
from kdistill.data import batches as batching
from kdistill.data.load import load_examples
from kdistill.losses import SparseSignal
from kdistill.models.teacher import load_tokenizer_and_config
from kdistill.sources.base import Quiet
from kdistill.sources.model import ModelSource, load_from_config
from kdistill.sources.server_client import ServerClient, ServerError
from kdistill.sources.server_writer import ServerWriter

log = logging.getLogger("kdistill")
PROBE = ["Once upon a time, the king said: 42 × π ≈ 131.9 — ok?",
         "The capital of France is Paris. It lies on the Seine, and about two million people live there.",
         "def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # 5"]
CAUSES = ("temperature or other logit processing on the server (serve with the defaults), a different dtype "
          "(serve float32 or bfloat16 as the local check runs), a chat template or BOS added to the prompt, or "
          "another checkpoint than teacher.model")


def row_ids(batch: dict) -> list[list[int]]:
    """Each row's tokens as the server reads them: the inputs and the last target, so the server's prompt
    positions 1..n are the batch positions 0..n-1. Shapes: batch (B, T) -> B lists of n + 1 ids."""
    lengths = batch["attention_mask"].sum(1).tolist()
    return [batch["input_ids"][b, :n].tolist() + [int(batch["targets"][b, n - 1])] if n else []
            for b, n in enumerate(lengths)]


def sparse_rows(answers: list, length: int, k: int, vocab_size: int, where: str) -> SparseSignal:
    """The answers of one batch as a SparseSignal; a wrong answer is a ServerError naming `where`.
    Shapes: B answers of (n, k) -> ids, logprobs (B, length, k); positions past n get -inf."""
    ids = torch.zeros(len(answers), length, k, dtype=torch.long)
    logprobs = torch.full((len(answers), length, k), float("-inf"))
    for b, (row_ids_, row_lp) in enumerate(answers):
        if not row_ids_:
            continue
        got_ids, got_lp = torch.tensor(row_ids_, dtype=torch.long), torch.tensor(row_lp, dtype=torch.float32)
        if got_ids.shape[0] > length or got_ids.shape[1] != k:
            raise ServerError(f"{where}, row {b}: {tuple(got_ids.shape)} log-probabilities for a row of at most "
                              f"{length} positions and top-{k}; not trained on")
        if not torch.isfinite(got_lp).all() or (got_lp > 1e-4).any():
            raise ServerError(f"{where}, row {b}: a log-probability that is NaN, infinite or above 0; not trained on")
        if (got_ids < 0).any() or (got_ids >= vocab_size).any():
            raise ServerError(f"{where}, row {b}: token id {int(got_ids.max())} outside the vocabulary of "
                              f"{vocab_size}; the server serves another model than teacher.model")
        n = got_ids.shape[0]
        ids[b, :n], logprobs[b, :n] = got_ids, got_lp.clamp(max=0.0)
    return SparseSignal(ids=ids, logprobs=logprobs)


def parity(client: ServerClient, tokenizer, model, k: int, device) -> dict:
    """The server against the local teacher on the probe rows: KL(local ‖ server) per token on the K + 1
    buckets the server gives (its top K and the rest) and top-1 agreement. Needs the local weights."""
    kls, agree, n = 0.0, 0, 0
    for text in PROBE:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        server_ids, server_lp = map(torch.tensor, client.prompt_topk(ids, k))
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids], device=device)).logits[0, :-1].float().cpu()
        local = logits.log_softmax(-1)
        p_top = local.gather(-1, server_ids).exp()
        q_top = server_lp.double().exp().float()
        p_rest, q_rest = (1 - p_top.sum(-1)).clamp_min(1e-12), (1 - q_top.sum(-1)).clamp_min(1e-12)
        kl = (p_top * (p_top.clamp_min(1e-30).log() - q_top.clamp_min(1e-30).log())).sum(-1)
        kls += float((kl + p_rest * (p_rest.log() - q_rest.log())).sum())
        agree += int((local.argmax(-1) == server_ids[:, 0]).sum())
        n += len(ids) - 1
    return {"kl": kls / n, "top1": agree / n, "positions": n}


class ServedSource(Quiet):
    """The teacher behind `teacher.server`. Build with `ServedSource.open(cfg, device, dtype)`."""

    against = "server"
    static = True  # the server is frozen: held-out signals are asked for once
    can_score_new_text = True  # the server reads any token ids: the student's rollouts are scored like data
    provides_activations = False

    def __init__(self, client: ServerClient, k: int, tokenizer, config, init_model, folder, spec: str,
                 prefetch: int = 2, workers: int = 4):
        self.client, self.k, self.tokenizer, self.config = client, k, tokenizer, config
        self.init_model, self.folder, self.spec, self.prefetch = init_model, folder, spec, prefetch
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kdistill-server")
        self._pending: dict[tuple, object] = {}  # row tokens -> the request in flight
        self._batches = 0

    @classmethod
    def open(cls, cfg, device, dtype) -> "ServedSource":
        t = cfg.teacher
        client = ServerClient(t.server, t.server_model, t.server_api, t.server_api_key_env, t.server_timeout,
                              t.server_retries)
        tokenizer, config, folder = load_tokenizer_and_config(t.model, t.trust_remote_code)
        model = None
        if cfg.student.init == "teacher" or t.parity_check:
            try:
                model, tokenizer, folder = load_from_config(cfg, device, dtype)
            except KdistillError as e:
                if cfg.student.init == "teacher":
                    raise type(e)(f"{e} (with teacher.server, teacher.model's weights are read only to initialise "
                                  "the student; set student.init=random to train without them)") from e
                log.info("teacher.model has no weights here (%s): the parity check compares tokenizers only", e)
        source = cls(client, t.server_top_k, tokenizer, config, model, folder, t.model, t.server_prefetch)
        if t.parity_check:
            source.check_parity(t.parity_max_kl, device)
        return source

    def check_parity(self, max_kl: float, device) -> dict:
        """Refuse a server that is not teacher.model (module docstring); returns what it measured."""
        probe = PROBE[0]
        mine = self.tokenizer(probe, add_special_tokens=False)["input_ids"]
        theirs = self.client.tokenize(probe)
        if mine != theirs:
            raise ConfigError(f"teacher server {self.client.url} tokenizes a probe text differently from "
                              f"teacher.model={self.spec} ({len(theirs)} vs {len(mine)} tokens, first difference at "
                              f"{next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), len(theirs)))}); "
                              "serve the same model, or point teacher.model at the served checkpoint")
        if self.init_model is None:
            return {"tokenizer": "equal"}
        found = parity(self.client, self.tokenizer, self.init_model, self.k, device)
        log.info("parity: server %s vs teacher.model %s: KL %.2e nats/token, top-1 %.1f%% on %d positions",
                 self.client.url, self.spec, found["kl"], 100 * found["top1"], found["positions"])
        if not found["kl"] <= max_kl:
            raise ConfigError(f"teacher server {self.client.url} is not teacher.model={self.spec}: KL(local ‖ server) "
                              f"{found['kl']:.3g} nats/token (teacher.parity_max_kl={max_kl}), top-1 agreement "
                              f"{100 * found['top1']:.1f}%; likely causes: {CAUSES}. Set teacher.parity_check=false "
                              "to train on it anyway")
        return found

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    def load_examples(self, cfg, device) -> list[dict]:
        """The run's examples; teacher-written ones are written by the server (keyed apart from local ones)."""
        eos = {self.tokenizer.eos_token_id} - {None}
        writer = ServerWriter(self.client, eos, local=self.init_model)
        return load_examples(cfg, writer, self.tokenizer, f"{self.folder}@server:{self.client.model or ''}", device)

    def _ask(self, ids: list[int]):
        key = tuple(ids)
        if key not in self._pending:
            self._pending[key] = self._pool.submit(self.client.prompt_topk, ids, self.k) if ids else None
        return self._pending[key]

    def collate(self, examples: list[dict], pad_id: int) -> dict:
        batch = batching.collate(examples, pad_id)
        for ids in row_ids(batch):  # the server starts on this batch now
            self._ask(ids)
        return batch

    def signal(self, batch: dict, vocab_size: int) -> SparseSignal:
        self._batches += 1
        rows = row_ids(batch)
        futures = [self._ask(ids) for ids in rows]
        try:
            answers = [f.result() if f is not None else ([], []) for f in futures]
        except ServerError:  # the run stops: requests asked for ahead are dropped, not retried for minutes
            self._pool.shutdown(wait=False, cancel_futures=True)
            raise
        for ids in rows:
            self._pending.pop(tuple(ids), None)
        where = f"teacher server {self.client.url}, batch {self._batches}"
        signal = sparse_rows(answers, batch["input_ids"].shape[1], self.k, min(vocab_size, self.vocab_size), where)
        return signal

    def references(self) -> list:
        return [self]

    def final_reference(self, cfg, device, dtype):
        """The local teacher when its weights load (the same model, checked by the parity check), else None."""
        try:
            model, tokenizer, folder = load_from_config(cfg, device, dtype)
        except KdistillError as e:
            log.warning("no local teacher to compare with (%s); eval.json holds metrics against the server", e)
            return None
        return ModelSource(model, tokenizer, folder, cfg.teacher.model)

    def identity(self) -> dict:
        return {"kind": "server", "model": self.client.model, "spec": self.spec, "top_k": self.k,
                "vocab_size": self.vocab_size}  # not the URL: a resumed run may find the server elsewhere

    def release_init(self) -> None:
        self.init_model = None  # the local weights initialised the student: never in the training loop
