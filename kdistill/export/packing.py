"""4-bit codes packed eight to an int32: the layout of compressed-tensors' `pack-quantized` format.

A code c in [-8, 7] is stored as the nibble c + 8; element j of a row sits in word j // 8 at bits
4 * (j % 8) (little end first). A row whose length is not a multiple of 8 is padded with nibble 0; the
padding is dropped when unpacking. This is `compressed_tensors.compressors.pack_quantized.pack_to_int32`
for num_bits=4 (tests/export/test_packing.py checks the two agree, bit for bit), written here so that
kdistill reads and writes its int4 folders without that package.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SHIFTS = torch.arange(0, 32, 4, dtype=torch.int64)  # bit offset of each of a word's 8 nibbles


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Shapes: codes (..., I) integers in [-8, 7] -> (..., ceil(I / 8)) int32"""
    if codes.numel() and (codes.min() < -8 or codes.max() > 7):
        raise ValueError("int4 codes must lie in [-8, 7]")
    nibbles = codes.to(torch.int64) + 8
    nibbles = F.pad(nibbles, (0, -nibbles.shape[-1] % 8))
    words = (nibbles.unflatten(-1, (-1, 8)) << SHIFTS).sum(-1)  # < 2**32, as unsigned
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # the same bits, signed


def unpack_int4(words: torch.Tensor, length: int) -> torch.Tensor:
    """Shapes: words (..., W) int32 -> (..., length) int8 codes in [-8, 7], length <= 8 W"""
    nibbles = (words.to(torch.int64).unsqueeze(-1) >> SHIFTS) & 0xF
    return (nibbles.flatten(-2)[..., :length] - 8).to(torch.int8)
