"""Bit streams for the cache codec: fixed-width fields, unary codes, and variable-width fields.

Everything is vectorised numpy over whole shards. A stream is a uint8 array (np.packbits, big-endian
bit order); its length in bits is stored beside it by the caller (the shard's `*_bits` entries).
"""
from __future__ import annotations

import numpy as np


def pack_fixed(values: np.ndarray, width: int) -> np.ndarray:
    """Each value in `width` bits, most significant first. Shapes: (N,) non-negative ints -> bytes"""
    values = np.asarray(values, dtype=np.uint64).reshape(-1)
    if width == 0 or values.size == 0:
        return np.zeros(0, np.uint8)
    if int(values.max()) >> width:
        raise ValueError(f"a value {int(values.max())} does not fit in {width} bits")
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
    return np.packbits(((values[:, None] >> shifts) & np.uint64(1)).astype(np.uint8).reshape(-1))


def unpack_fixed(data: np.ndarray, width: int, count: int) -> np.ndarray:
    """Inverse of pack_fixed. Shapes: bytes -> (count,) int64"""
    if width == 0 or count == 0:
        return np.zeros(count, np.int64)
    bits = np.unpackbits(data, count=count * width).reshape(count, width).astype(np.int64)
    return bits @ (np.int64(1) << np.arange(width - 1, -1, -1, dtype=np.int64))


def pack_unary(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Each value v as v one-bits and a zero. Returns (bytes, length in bits). Shapes: (N,) -> bytes"""
    values = np.asarray(values, dtype=np.int64).reshape(-1)
    n_bits = int(values.sum()) + values.size
    bits = np.ones(n_bits, np.uint8)
    bits[np.cumsum(values + 1) - 1] = 0
    return np.packbits(bits), n_bits


def unpack_unary(data: np.ndarray, n_bits: int, count: int) -> np.ndarray:
    """Inverse of pack_unary. Shapes: bytes -> (count,) int64"""
    zeros = np.flatnonzero(np.unpackbits(data, count=n_bits) == 0)
    if zeros.size != count:
        raise ValueError(f"unary stream holds {zeros.size} codes, expected {count}")
    return np.diff(zeros, prepend=-1) - 1


def pack_varwidth(values: np.ndarray, widths: np.ndarray) -> tuple[np.ndarray, int]:
    """values[i] in widths[i] bits, concatenated. Returns (bytes, length in bits)."""
    values, widths = np.asarray(values, np.int64).reshape(-1), np.asarray(widths, np.int64).reshape(-1)
    n_bits = int(widths.sum())
    if n_bits == 0:
        return np.zeros(0, np.uint8), 0
    owner = np.repeat(np.arange(values.size), widths)  # which value each bit belongs to
    starts = np.cumsum(widths) - widths
    shift = widths[owner] - 1 - (np.arange(n_bits) - starts[owner])  # MSB first
    return np.packbits(((values[owner] >> shift) & 1).astype(np.uint8)), n_bits


def read_varwidth(bits: np.ndarray, offsets: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Values of widths[i] bits starting at bit offsets[i] of an unpacked bit array.

    Shapes: bits (n_bits,) uint8 of 0/1, offsets (N,), widths (N,) -> (N,) int64
    """
    out = np.zeros(offsets.shape, np.int64)
    for b in range(int(widths.max(initial=0))):
        live = widths > b
        out[live] = (out[live] << 1) | bits[offsets[live] + b]
    return out


def bit_length(values: np.ndarray) -> np.ndarray:
    """Number of bits of each non-negative int (0 for 0). Shapes: (N,) -> (N,) int64"""
    values = np.asarray(values, np.int64)
    out = np.zeros(values.shape, np.int64)
    nz = values > 0
    out[nz] = np.floor(np.log2(values[nz])).astype(np.int64) + 1
    fix = nz & ((np.int64(1) << np.clip(out, 0, 62)) <= values)  # float rounding near powers of two
    out[fix] += 1
    fix = nz & ((np.int64(1) << np.clip(out - 1, 0, 62)) > values)
    out[fix] -= 1
    return out
