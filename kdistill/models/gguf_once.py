"""Parse a GGUF file once while transformers converts it to a plain model.

    with read_once():
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)

transformers reads a GGUF file three times (for the config, the weights and the tokenizer), each a full
parse of its metadata (SmolLM2's 49,152-token vocabulary: ~10 s a parse on a 2-core CPU), and rebuilds
gguf's tensor-name map once per tensor (~11 s for the embedded teacher's 272 tensors). Inside `read_once`
both are memoised: one reader per (path, mode), one name map per (architecture, layer count). The
readers are read-only memory maps, so every caller sees what it would have parsed itself
(tests/models/test_embedded_teacher.py compares the converted teacher with transformers' own load);
outside the block gguf is as it was.
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path


@contextlib.contextmanager
def read_once():
    import gguf

    reader, names = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict = {}

    def cached_reader(path, mode="r"):
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = reader(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = cached_reader, functools.lru_cache(maxsize=None)(names)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, names
        readers.clear()
