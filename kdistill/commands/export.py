"""`kdistill export`: a student folder -> GGUF for llama.cpp, or int8/int4 safetensors (kdistill/export/pipeline.py).

    kdistill export --model runs/demo/student --format gguf --type Q8_0
"""
from __future__ import annotations

from kdistill import api
from kdistill.commands.args import export_arguments

add_arguments = export_arguments  # defined without torch, so `kdistill export --help` is quick


def main(args) -> int:
    api.export(args.model, args.format, args.type, args.out, group_size=args.group_size, max_bits=args.max_bits,
               calibration=args.calibration, keep_embeddings=args.keep_embeddings, data=args.data,
               seq_len=args.seq_len, max_tokens=args.max_tokens, measure=not args.no_eval, force=args.force)
    return 0
