"""Cross-tokenizer alignment, as pure functions of byte strings: token groups and matching vocabulary entries.

Two tokenizers read the same text; each token covers a run of its bytes. A **group** is the shortest run
of consecutive tokens on both sides that ends where both sides reach the same byte boundary:

    text     "héllo 👋"   (bytes: h é=2 l l o ␠ 👋=4)
    student  [h][é][llo][ 👋]          byte ends 1 3 6 11
    teacher  [hé][ll][o ][👋]           byte ends 3 5 7 11
    groups   ([h][é] | [hé]), ([llo][ 👋] | [ll][o ][👋])   boundaries where both end: 3, 11

Working on bytes, not characters, makes a token that holds part of a multibyte character (byte-level BPE
splits emoji) an ordinary token: its boundary simply is not shared. Groups partition both token
sequences, and each group covers the same bytes on both sides. With one tokenizer on both sides every
token is its own group. A token with no bytes (a special token) joins the group it is in.

`string_pairs` matches vocabulary entries whose byte strings are equal, once per tokenizer pair: the
exact part of the `hybrid` loss compares the two distributions on those entries (see `losses/cross/groups.py`).
"""
from __future__ import annotations

import bisect
import itertools

import torch
from torch import Tensor


def byte_ends(lengths: list[int]) -> list[int]:
    """Cumulative byte end of each token. Shapes: (n,) -> (n,)"""
    return list(itertools.accumulate(lengths))


def byte_groups(student_lengths: list[int], teacher_lengths: list[int]) -> list[tuple[int, int, int, int]]:
    """Groups of two tokenizations of one byte string: (student start, end, teacher start, end) token ranges.

    `*_lengths[i]`: bytes of token i; both sides must cover the same bytes. Group boundaries are the byte
    ends both sides reach; a token belongs to the first group whose boundary is at or after its end, so a
    token of zero bytes joins the group that ends where it stands (at the start: the first group).
    Shapes: (n,), (m,) -> G tuples with ranges [start, end), in order, partitioning 0..n and 0..m
    """
    if sum(student_lengths) != sum(teacher_lengths):
        raise ValueError(f"the two tokenizations cover {sum(student_lengths)} and {sum(teacher_lengths)} bytes")
    s_ends, t_ends = byte_ends(student_lengths), byte_ends(teacher_lengths)
    bounds = sorted((set(s_ends) & set(t_ends)) - {0}) or [0]
    s_group = [min(bisect.bisect_left(bounds, e), len(bounds) - 1) for e in s_ends]
    t_group = [min(bisect.bisect_left(bounds, e), len(bounds) - 1) for e in t_ends]
    s_runs, t_runs = _runs(s_group, len(bounds)), _runs(t_group, len(bounds))
    return [(*s_runs[g], *t_runs[g]) for g in range(len(bounds)) if s_runs[g] and t_runs[g]]


def _runs(group_of: list[int], n: int) -> list[tuple[int, int] | tuple]:
    """[start, end) of each group in a nondecreasing token -> group list; () for a group with no token."""
    runs: list = [()] * n
    for i, g in enumerate(group_of):
        runs[g] = (runs[g][0], i + 1) if runs[g] else (i, i + 1)
    return runs


def group_ranges(groups: list[tuple[int, int, int, int]], side: int) -> list[tuple[int, int]]:
    """One side's token ranges: side 0 the student, 1 the teacher. Shapes: G tuples -> G (start, end)"""
    return [(g[2 * side], g[2 * side + 1]) for g in groups]


def string_pairs(student_strings: list[bytes | None], teacher_strings: list[bytes | None]) -> tuple[Tensor, Tensor]:
    """Vocabulary entries whose byte strings are equal: (student ids, teacher ids), one pair per string.

    `*_strings[id]`: the entry's bytes, None for an entry that is no text (padding rows). When a string
    occurs under several ids on a side the lowest id is used. Identical lists give the identity pairing.
    Shapes: (Vs,), (Vt,) -> (M,) long, (M,) long, sorted by student id
    """
    first = {}
    for i, s in enumerate(teacher_strings):
        if s is not None and s not in first:
            first[s] = i
    seen, s_ids, t_ids = set(), [], []
    for i, s in enumerate(student_strings):
        if s is not None and s in first and s not in seen:
            seen.add(s)
            s_ids.append(i)
            t_ids.append(first[s])
    return torch.tensor(s_ids, dtype=torch.long), torch.tensor(t_ids, dtype=torch.long)


def identity_pairs(student_vocab: int, teacher_vocab: int) -> tuple[Tensor, Tensor]:
    """The pairing of one tokenizer with itself: id i with id i. Shapes: -> (min V,), (min V,)"""
    ids = torch.arange(min(student_vocab, teacher_vocab))
    return ids, ids.clone()
