"""Teacher-written data through a teacher server's completions (data.generate, self-instruct, chain of thought).

    writer = ServerWriter(client, eos_ids={2})
    rows = writer.write_batch(prompts, settings, seed=7)   # the new ids of each prompt, its EOS kept

`data/teacher_written.py` calls `write_batch` in place of the local model's `generate` when it is handed a
writer: every prompt of a batch goes out at once as its own request (the server batches them itself), each
with the seed `seed * 1_000_003 + i`, so a resumed generation writes what an uninterrupted one would have
and two samples of one prompt differ. `local` is the local teacher (or None), for what needs its weights
(the quality filter's log-probability score).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from kdistill.sources.server_client import ServerClient


def cut_at_eos(new: list[int], eos_ids: set[int]) -> list[int]:
    """`new` up to and including its first EOS (what the local generation keeps)."""
    for i, t in enumerate(new):
        if t in eos_ids:
            return new[:i + 1]
    return new


class ServerWriter:
    """Writes the teacher's continuations on the server; see the module docstring."""

    def __init__(self, client: ServerClient, eos_ids: set[int], local=None, workers: int = 16):
        self.client, self.eos_ids, self.local = client, set(eos_ids), local
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kdistill-writer")

    def write_batch(self, prompts: list[list[int]], settings: dict, seed: int) -> list[list[int]]:
        """The new ids of each prompt, sampled with `settings` (max_new_tokens, temperature, top_p).
        Shapes: B prompts -> B lists of <= max_new_tokens ids"""
        futures = [self._pool.submit(self.client.generate_ids, p, settings["max_new_tokens"], settings["temperature"],
                                     settings["top_p"], (seed * 1_000_003 + i) % 2**31) for i, p in enumerate(prompts)]
        return [cut_at_eos(f.result(), self.eos_ids) for f in futures]
