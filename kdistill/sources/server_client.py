"""Talk to a teacher on an inference server: vLLM's OpenAI-compatible completions, or SGLang's /generate.

    client = ServerClient("http://127.0.0.1:8000/v1", model="teacher", api="vllm")
    ids, logprobs = client.prompt_topk([1, 504, 3299, 314], k=20)   # (T-1, K) each: positions 1..T-1

The trainer never imports the engine; it sends token ids over HTTP (the standard library's urllib) and
reads back, for every prompt position after the first, the K most likely next-token ids with their
log-probabilities under the teacher's full distribution (the tail mass is what they leave out).

- vLLM: POST {url}/completions {"model", "prompt": [ids], "max_tokens": 1, "temperature": 0,
  "prompt_logprobs": K}; `choices[0].prompt_logprobs` is a list per prompt token, the first null, each a
  dict keyed by the token id (a string) with "logprob" and "rank" (the top K, plus the actual token when
  it is outside them). Token-id prompts get no BOS added.
- SGLang: POST {base}/generate {"input_ids": [ids], "sampling_params": {"max_new_tokens": 0},
  "return_logprob": true, "logprob_start_len": 0, "top_logprobs_num": K}; `meta_info.input_top_logprobs`
  is a list per prompt token, the first null, each a list of [logprob, id, text].
Connection refused, timeouts, dropped connections, 429 and 5xx are retried with exponential back-off
(`retries` times); then a ServerError names the URL. Any other answer that is not what the run needs is a
ServerError naming the URL and what was wrong.
"""
from __future__ import annotations

import http.client
import json
import math
import os
import socket
import time
import urllib.error
import urllib.request

from kdistill.base.errors import TeacherUnavailable

RETRY_STATUS = {408, 429, 500, 502, 503, 504}
APIS = ("vllm", "sglang")


class ServerError(TeacherUnavailable):
    """The teacher server could not give what the run needs (after retries, or a wrong answer)."""


class ServerClient:
    """One teacher server. `api_key_env` names the environment variable holding the key (never the key)."""

    def __init__(self, url: str, model: str | None = None, api: str = "vllm", api_key_env: str | None = None,
                 timeout: float = 120.0, retries: int = 5, backoff: float = 0.5):
        if api not in APIS:
            raise ServerError(f"teacher.server_api={api!r}: choose one of {', '.join(APIS)}")
        self.url, self.model, self.api = url.rstrip("/"), model, api
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self._key = os.environ.get(api_key_env, "") if api_key_env else ""
        if api_key_env and not self._key:
            raise ServerError(f"teacher.server_api_key_env={api_key_env}: that environment variable is not set; "
                              "export it with the server's API key, or leave the key out")

    def _base(self) -> str:
        """The server's root (the /v1 of an OpenAI-style URL removed): where /tokenize and /generate live."""
        return self.url[:-3] if self.url.endswith("/v1") else self.url

    def post(self, path: str, body: dict, base: str | None = None) -> dict:
        """POST JSON to base + path with retries; the decoded JSON answer."""
        url = (base or self.url) + path
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {self._key}"} if self._key else {})}
        data = json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            why = None
            try:
                req = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as e:
                text = e.read()[:300].decode(errors="replace")
                if e.code not in RETRY_STATUS:
                    raise ServerError(f"teacher server {url} answered {e.code}: {text.strip()}") from None
                why = f"HTTP {e.code}"
            except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError,
                    http.client.HTTPException) as e:
                why = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            except json.JSONDecodeError:
                raise ServerError(f"teacher server {url} answered with something that is not JSON") from None
            if attempt < self.retries:
                time.sleep(self.backoff * 2 ** attempt)
        raise ServerError(f"teacher server {url} did not answer after {self.retries + 1} tries (last: {why}); "
                          "check that it runs and is reachable (`make teacher-server` starts one)")

    def prompt_topk(self, ids: list[int], k: int) -> tuple[list[list[int]], list[list[float]]]:
        """Top-k next-token ids and log-probabilities at prompt positions 1..len(ids)-1 (what predicts ids[t]
        from ids[:t]), each row sorted by rank. Shapes: ids (T,) -> (T-1, k), (T-1, k)."""
        if self.api == "vllm":
            body = {"prompt": ids, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": k}
            if self.model:
                body["model"] = self.model
            answer = self.post("/completions", body)
            try:
                rows = answer["choices"][0]["prompt_logprobs"]
            except (KeyError, IndexError, TypeError):
                raise ServerError(f"teacher server {self.url}/completions gave no prompt_logprobs; it must be "
                                  "vLLM's OpenAI-compatible server (or set teacher.server_api=sglang)") from None
            rows = [None if r is None else sorted(((int(t), float(v["logprob"]), v.get("rank", 0)) for t, v in
                                                   r.items()), key=lambda x: (x[2] if x[2] else math.inf, -x[1]))
                    for r in rows]
        else:
            body = {"input_ids": ids, "sampling_params": {"max_new_tokens": 0, "temperature": 0.0},
                    "return_logprob": True, "logprob_start_len": 0, "top_logprobs_num": k}
            answer = self.post("/generate", body, base=self._base())
            try:
                rows = answer["meta_info"]["input_top_logprobs"]
            except (KeyError, TypeError):
                raise ServerError(f"teacher server {self._base()}/generate gave no input_top_logprobs; it must "
                                  "be SGLang's server (or set teacher.server_api=vllm)") from None
            rows = [None if r is None else [(int(e[1]), float(e[0]), i + 1) for i, e in enumerate(r)] for r in rows]
        if len(rows) != len(ids):
            raise ServerError(f"teacher server {self.url}: {len(rows)} prompt positions for a prompt of {len(ids)} "
                              "tokens; the server must return one entry per prompt token")
        top = [r[:k] if r else r for r in rows[1:]]
        if any(r is None or len(r) < k for r in top):
            short = min(len(r or ()) for r in top)
            raise ServerError(f"teacher server {self.url}: {short} log-probabilities at a position where {k} were "
                              f"asked; start the server with --max-logprobs {k} or more (vLLM)")
        return [[t for t, _, _ in r] for r in top], [[v for _, v, _ in r] for r in top]

    def generate_ids(self, ids: list[int], max_new_tokens: int, temperature: float, top_p: float,
                     seed: int) -> list[int]:
        """The new token ids the server samples after the prompt `ids` (its EOS kept when it stopped there),
        with the request's own seed, so the same request writes the same tokens. Shapes: (T,) -> (<= max_new,)"""
        sampling = {"temperature": float(temperature), "top_p": float(top_p) if temperature > 0 else 1.0}
        if self.api == "vllm":
            body = {"prompt": ids, "max_tokens": max_new_tokens, "seed": seed, "return_token_ids": True,
                    "skip_special_tokens": False, **sampling, **({"model": self.model} if self.model else {})}
            answer, where, key = self.post("/completions", body), f"{self.url}/completions", "token_ids"
            found = answer.get("choices", [{}])[0] if isinstance(answer, dict) and answer.get("choices") else {}
        else:
            body = {"input_ids": ids, "sampling_params": {"max_new_tokens": max_new_tokens, "sampling_seed": seed,
                                                          **sampling}}
            found, where, key = self.post("/generate", body, base=self._base()), f"{self._base()}/generate", "output_ids"
        new = found.get(key) if isinstance(found, dict) else None
        if not isinstance(new, list) or not all(isinstance(t, int) for t in new):
            raise ServerError(f"teacher server {where} returned no {key}; it must be "
                              f"{'vLLM 0.10.2 or newer' if self.api == 'vllm' else 'SGLang'} to write data by token ids")
        if len(new) > max_new_tokens:
            raise ServerError(f"teacher server {where}: {len(new)} new tokens where at most {max_new_tokens} were asked")
        return new

    def tokenize(self, text: str) -> list[int]:
        """The server's own tokens for `text` (no special tokens added), to compare tokenizers."""
        if self.api == "vllm":
            body = {"prompt": text, "add_special_tokens": False, **({"model": self.model} if self.model else {})}
            return list(self.post("/tokenize", body, base=self._base())["tokens"])
        return list(self.post("/generate", {"text": text, "sampling_params": {"max_new_tokens": 0},
                                            "return_logprob": True, "logprob_start_len": 0},
                              base=self._base())["meta_info"]["input_token_logprobs_ids"])
