"""`kdistill export`: a student folder -> GGUF for llama.cpp, or int8/int4 safetensors for PyTorch.

Every export is measured before the command returns: the output is loaded back (GGUF through
transformers' own GGUF reader) and its logits compared with the float student on held-out text.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..cli_args import export_arguments
from ..errors import KdistillError
from ..model_card import write_export_card
from .gguf_writer import load_student, write_gguf
from .measure import HELD_OUT_TEXT, gguf_report, quant_report, read_heldout, text_batches
from .quant_io import save_quantized
from .quantize import quantize_model

add_arguments = export_arguments  # defined without torch, so `kdistill export --help` is quick


def default_out(model_dir: Path, args) -> Path:
    name = model_dir.resolve().name
    if args.format == "gguf":
        return model_dir.resolve().parent / f"{name}-{args.type.lower()}.gguf"
    return model_dir.resolve().parent / f"{name}-{args.format}"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024


def format_table(out: Path, label: str, report: dict | None) -> str:
    rows = [("output", str(out)), ("format", label)]
    if report is not None:
        rows += [
            ("size", _size(report["bytes_after"])),
            ("fp32 weights", _size(report["bytes_before"])),
            ("memory saved", f"{_size(report['bytes_saved'])} ({100 * report['saved_fraction']:.1f}%)"),
            ("KL(fp32 || out) mean", f"{report['kl_mean']:.3e} nats/token"),
            ("KL max", f"{report['kl_max']:.3e}"),
            ("top-1 agreement", f"{100 * report['top1_agreement']:.2f}%"),
            ("max |logit error|", f"{report['max_abs_logit_error']:.3e}"),
            ("held-out tokens", str(report["tokens"])),
        ]
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


def main(args) -> int:
    """Run one export; KdistillError (bad paths, unsupported models) propagates to the caller's handler."""
    run_export(args)
    return 0


def run_export(args) -> dict:
    """One export: writes the output and its model card, prints the table; returns {out, format, card,
    report (None with --no-eval)}."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a command prints its table, not per-tensor progress bars
    logging.getLogger("gguf").setLevel(logging.WARNING)
    if args.type and args.format != "gguf":
        raise KdistillError(f"--type {args.type} is a GGUF tensor type; with --format {args.format} leave it out "
                            f"(or use --format gguf --type {args.type})")
    args.type = args.type or "F16"
    model_dir = Path(args.model)
    out = Path(args.out) if args.out else default_out(model_dir, args)
    text = read_heldout(args.data) if args.data else HELD_OUT_TEXT
    model, tokenizer = load_student(model_dir, llama_only=args.format == "gguf")
    batches = None if args.no_eval else text_batches(tokenizer, text, args.seq_len, args.max_tokens)
    if args.format == "gguf":
        write_gguf(model, tokenizer, out, args.type, model_dir.resolve().name, str(model_dir))
        label = f"GGUF {args.type}"
        report = None if args.no_eval else gguf_report(model, out, batches)
    else:
        quantized = quantize_model(model, args.format, args.group_size, embeddings=not args.keep_embeddings)
        save_quantized(quantized, out, tokenizer)
        label = args.format + (f" (group {args.group_size}" if args.format == "int4" else " (per channel")
        label += ", vocab float)" if args.keep_embeddings else ", vocab int8)"
        report = None if args.no_eval else quant_report(model, quantized, batches)
    print(format_table(out, label, report))
    card = write_export_card(model_dir, out, label, report)
    return {"out": str(out), "format": label, "card": str(card), "report": report}


if __name__ == "__main__":  # python -m kdistill.export.cli ...
    import sys

    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(prog="kdistill export")
    add_arguments(parser)
    try:
        sys.exit(main(parser.parse_args()))
    except KdistillError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
