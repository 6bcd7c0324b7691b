"""Self-instruct (Wang et al. 2023; the guide's `generate_instruction_data`): new instructions from seeds.

    seeds = read_seeds("data/seed_tasks.txt")
    asks = requests(seeds, cfg.data.generate.self_instruct, seed=1234)    # prompts for the teacher
    new, dropped = select([parse_instruction(t) for t in replies], seeds, cfg.data.generate.self_instruct)

Each request shows the teacher `examples_per_request` seed tasks, drawn with a seeded RNG, and asks for
one new task. A reply's first line is the candidate (numbering, "Task:" and quotes stripped). A candidate
is dropped as `unusable` (fewer than 2 or more than 100 words), `copies_seed` (word-bigram Jaccard >=
max_similarity with a seed) or `duplicate` (the same with an earlier new instruction). The kept ones are
then answered by the teacher like the prompts of a prompts file (loss on the answer only).
"""
from __future__ import annotations

import math
import random
import re
from collections import Counter

from kdistill.data.dedup import NearDuplicates, words
from kdistill.data.prompts_file import Prompt, plain, read_prompts

REQUEST = ("Here are some example tasks:\n{examples}\n\nWrite one new task that is different from all of these. "
           "Reply with the task only.")
LEAD = re.compile(r"^\s*(?:\d+\s*[.):-]|[-*\u2022]|(?:new\s+)?task\s*\d*\s*[:.-]|instruction\s*:)\s*", re.IGNORECASE)


def read_seeds(spec: str) -> list[str]:
    return [p.text for p in read_prompts(spec, key="data.generate.self_instruct.seed_tasks")]


def requests(seeds: list[str], cfg, seed: int) -> list[Prompt]:
    """ceil(num_instructions * oversample) requests, each showing a random handful of seeds."""
    rng = random.Random(seed)
    n = math.ceil(cfg.num_instructions * cfg.oversample)
    k = min(cfg.examples_per_request, len(seeds))
    out = []
    for i in range(n):
        shown = rng.sample(seeds, k)
        examples = "\n".join(f"{j + 1}. {s}" for j, s in enumerate(shown))
        out.append(plain(REQUEST.format(examples=examples), f"self-instruct request {i + 1}"))
    return out


def parse_instruction(reply: str) -> str | None:
    """The task a reply states: its first non-empty line, without numbering, a "Task:" lead or quotes."""
    for line in reply.splitlines():
        text = LEAD.sub("", line).strip().strip("\"'*` ").strip()
        if text:
            return text if 2 <= len(words(text)) <= 100 else None
    return None


def select(candidates: list[str | None], seeds: list[str], cfg) -> tuple[list[str], Counter]:
    """(new instructions in order, at most num_instructions; dropped candidates by reason)."""
    index = NearDuplicates(cfg.max_similarity, n=2)
    for s in seeds:
        index.add(s)
    n_seeds = len(index.sets)  # seeds that nearly repeat each other are indexed once
    kept, dropped = [], Counter()
    for text in candidates:
        if text is None:
            dropped["unusable"] += 1
            continue
        j = index.match(text)
        if j is not None:
            dropped["copies_seed" if j < n_seeds else "duplicate"] += 1
            continue
        if len(kept) == cfg.num_instructions:
            dropped["surplus"] += 1
            continue
        index.add(text)
        kept.append(text)
    return kept, dropped
