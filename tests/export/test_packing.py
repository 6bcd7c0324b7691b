"""int4 packing: eight codes an int32, the same bits as compressed-tensors' `pack_to_int32`."""
import pytest
import torch

from kdistill.export.packing import pack_int4, unpack_int4


@pytest.mark.parametrize("cols", [8, 64, 13, 1])
def test_round_trip(cols):
    codes = torch.randint(-8, 8, (5, cols), generator=torch.Generator().manual_seed(cols), dtype=torch.int8)
    words = pack_int4(codes)
    assert words.dtype == torch.int32 and words.shape == (5, -(-cols // 8))
    assert torch.equal(unpack_int4(words, cols), codes)


def test_layout_is_little_end_first():
    codes = torch.tensor([[-8, -7, 0, 7, -8, -8, -8, 7]])
    word = int(pack_int4(codes)[0, 0]) & 0xFFFFFFFF
    assert [(word >> (4 * j)) & 0xF for j in range(8)] == [0, 1, 8, 15, 0, 0, 0, 15]


def test_out_of_range_codes_are_refused():
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        pack_int4(torch.tensor([[8]]))


@pytest.mark.parametrize("cols", [64, 96, 13])
def test_same_bits_as_compressed_tensors(cols):
    helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    codes = torch.randint(-8, 8, (7, cols), generator=torch.Generator().manual_seed(0), dtype=torch.int8)
    assert torch.equal(pack_int4(codes), helpers.pack_to_int32(codes, 4))
    assert torch.equal(unpack_int4(pack_int4(codes), cols), helpers.unpack_from_int32(pack_int4(codes), 4,
                                                                                       torch.Size((7, cols))))
