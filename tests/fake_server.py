"""A hand-written stand-in for vLLM's completions endpoint, for fault tests only (the real server is tested
in test_served_vllm.py): it answers prompt_logprobs from a local model, and `faults` changes what it does."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch


class FakeServer:
    """`faults`: a list consumed one request at a time, each None (answer) or one of "503", "400", "drop",
    "slow", "short", "outside", "nan", "length"; `dead_after` requests, the server answers nothing more."""

    def __init__(self, model=None, tokenizer=None, faults=(), dead_after: int | None = None, slow_s: float = 2.0):
        self.model, self.tokenizer, self.faults = model, tokenizer, list(faults)
        self.dead_after, self.slow_s, self.requests = dead_after, slow_s, 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.answer(self, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def _send(self, handler, code: int, obj):
        data = json.dumps(obj).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def answer(self, handler, body: dict):
        self.requests += 1
        if self.dead_after is not None and self.requests > self.dead_after:
            handler.close_connection = True
            handler.connection.close()
            return
        fault = self.faults.pop(0) if self.faults else None
        if handler.path.endswith("/tokenize"):
            return self._send(handler, 200, {"tokens": self.tokenizer(body["prompt"], add_special_tokens=False)
                                             ["input_ids"]})
        if fault == "503":
            return self._send(handler, 503, {"error": "overloaded"})
        if fault == "400":
            return self._send(handler, 400, {"error": {"message": "bad request"}})
        if fault == "drop":
            handler.close_connection = True
            return handler.connection.close()
        if fault == "slow":
            import time

            time.sleep(self.slow_s)
        rows = self.rows(body["prompt"], body["prompt_logprobs"], fault)
        self._send(handler, 200, {"choices": [{"text": "", "prompt_logprobs": rows}]})

    def rows(self, ids: list[int], k: int, fault):
        with torch.no_grad():
            lp = self.model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
        rows = [None]
        for t in range(1, len(ids)):
            values, top = lp[t - 1].topk(k)
            entry = {str(int(i)): {"logprob": float(v), "rank": r + 1, "decoded_token": ""}
                     for r, (v, i) in enumerate(zip(values, top))}
            rows.append(entry)
        if fault == "short":
            rows[1] = dict(list(rows[1].items())[: k - 1])
        elif fault == "outside":
            rows[1] = {"999999": {"logprob": -0.1, "rank": 1}, **dict(list(rows[1].items())[1:])}
        elif fault == "nan":
            first = next(iter(rows[1]))
            rows[1][first]["logprob"] = float("nan")
        elif fault == "length":
            rows = rows[:-1]
        return rows
