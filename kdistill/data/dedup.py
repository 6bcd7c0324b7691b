"""Near-duplicate detection: word n-gram shingles, MinHash signatures and an LSH index (numpy only).

    index = NearDuplicates(threshold=0.9, n=3)
    index.add("the cat sat on the mat")          # False: nothing like it yet (and now indexed)
    index.add("The cat sat on the mat!")         # True: Jaccard 1.0 >= 0.9 with the first

MinHash (Broder 1997): for a set S of shingle hashes and random h_i(x) = (a_i x + b_i) mod p, the chance
that min h_i(S) == min h_i(T) is the Jaccard similarity |S ∩ T| / |S ∪ T|. Signatures are cut into bands;
texts that agree on a whole band are candidates (LSH), and a candidate counts as a duplicate only when
the exact Jaccard of the two shingle sets reaches the threshold, so the estimate never decides alone.
`datasketch` does the same at scale (and needs scipy); the data here is thousands of samples, not billions.
"""
from __future__ import annotations

import re
import zlib

import numpy as np

PRIME = (1 << 31) - 1  # a Mersenne prime: a, x < 2^31 keep a x + b inside 64 bits
WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Lowercased word tokens (punctuation and space dropped)."""
    return WORD.findall(text.lower())


def normalise(text: str) -> str:
    """Text for exact-duplicate checks: lowercased, space collapsed."""
    return " ".join(text.lower().split())


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def shingles(text: str, n: int) -> set[int]:
    """32-bit hashes of the text's word n-grams (the whole text as one shingle when it is shorter)."""
    tokens = words(text)
    grams = ngrams(tokens, n) or ([tuple(tokens)] if tokens else [])
    return {zlib.crc32(" ".join(g).encode()) for g in grams}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class MinHasher:
    """`num_perm` hash functions (a x + b) mod p, p = 2^31 - 1, for shingle hashes x reduced mod p."""

    def __init__(self, num_perm: int = 64, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, PRIME, num_perm, dtype=np.uint64)
        self.b = rng.integers(0, PRIME, num_perm, dtype=np.uint64)

    def signature(self, hashes: set[int]) -> np.ndarray:
        """Shapes: hashes (S,) -> (num_perm,) uint64; an empty set gives all PRIME."""
        if not hashes:
            return np.full(len(self.a), PRIME, dtype=np.uint64)
        x = np.fromiter(hashes, dtype=np.uint64, count=len(hashes)) % np.uint64(PRIME)
        return ((self.a[:, None] * x[None, :] + self.b[:, None]) % np.uint64(PRIME)).min(axis=1)


class NearDuplicates:
    """Texts added so far; `add` says whether a new text is a near duplicate of one of them (Jaccard >=
    threshold over word n-gram shingles) and indexes it when it is not."""

    def __init__(self, threshold: float, n: int = 3, num_perm: int = 64, seed: int = 0):
        self.threshold, self.n = threshold, n
        # the longest band (fewest candidates) that still finds a pair at the threshold 999 times in 1000
        self.rows = max(r for r in range(1, 9) if r == 1 or 1 - (1 - threshold ** r) ** (num_perm // r) >= 0.999)
        self.hasher = MinHasher(num_perm, seed)
        self.buckets: list[dict] = [{} for _ in range(num_perm // self.rows)]
        self.sets: list[set[int]] = []

    def _keys(self, text: str) -> tuple[set[int], list[bytes]]:
        s = shingles(text, self.n)
        sig = self.hasher.signature(s)
        return s, [sig[b * self.rows:(b + 1) * self.rows].tobytes() for b in range(len(self.buckets))]

    def _match(self, s: set[int], keys: list[bytes]) -> int | None:
        seen = set()
        for bucket, key in zip(self.buckets, keys):
            for j in bucket.get(key, ()):
                if j not in seen:
                    seen.add(j)
                    if jaccard(s, self.sets[j]) >= self.threshold:
                        return j
        return None

    def match(self, text: str) -> int | None:
        """Index of an added text this one nearly duplicates, or None."""
        return self._match(*self._keys(text))

    def add(self, text: str) -> bool:
        """True when `text` nearly duplicates an added text (it is then not added)."""
        s, keys = self._keys(text)
        if self._match(s, keys) is not None:
            return True
        for bucket, key in zip(self.buckets, keys):
            bucket.setdefault(key, []).append(len(self.sets))
        self.sets.append(s)
        return False
