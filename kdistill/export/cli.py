"""`kdistill export`: a student folder -> GGUF for llama.cpp, or int8/int4 safetensors for PyTorch.

Every export is measured before the command returns: the output is loaded back (GGUF through
transformers' own GGUF reader) and its logits compared with the float student on held-out text.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..cli_args import export_arguments
from ..errors import KdistillError
from ..model_card import write_export_card
from .bounds import EXPECTED_KL, kind_of, kl_warning
from .gguf_writer import load_student, write_gguf
from .measure import CALIBRATION_TEXT, HELD_OUT_TEXT, gguf_report, quant_report, read_heldout, text_batches
from .quant_io import save_quantized
from .quantize import GROUP_SIZES, check_scheme, quantize_model

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


def format_table(out: Path, label: str, report: dict | None, kind: str = "") -> str:
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
        rows += [("expected KL", f"<= {EXPECTED_KL[kind]:g} for {kind} (kdistill/export/bounds.py)")] if kind else []
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


def main(args) -> int:
    """Run one export; KdistillError (bad paths, unsupported models) propagates to the caller's handler."""
    run_export(args)
    return 0


def choice_table(choice: dict) -> str:
    """The int4 candidates and what each measured on the calibration text."""
    lines = ["int4 candidates, KL(fp32 || candidate) on the calibration text:"]
    for row in choice["candidates"]:
        name = f"group {row['group_size']}{', clipped' if row['clip'] else ''}"
        measured = f"KL {row['kl']:.4f}  top-1 {100 * row['top1']:.1f}%" if row["fits"] else "over --max-bits"
        best = not choice["promoted"] and (row["group_size"], row["clip"]) == (choice["group_size"], choice["clip"])
        lines.append(f"  {name:<20} {row['bits']:.2f} bits/weight  {measured}" + ("   <- chosen" if best else ""))
    if choice["promoted"]:
        lines.append(f"  + {len(choice['promoted'])} layers in int8     {choice['bits']:.2f} bits/weight  "
                     f"KL {choice['kl']:.4f}  top-1 {100 * choice['top1']:.1f}%   <- chosen")
    return "\n".join(lines)


def int4_choice(model, tokenizer, args) -> dict:
    """choose_int4 on the calibration text (--calibration, else a built-in paragraph), with a bar."""
    from tqdm.auto import tqdm

    from .choose import choose_int4

    sizes = (args.group_size,) if args.group_size else GROUP_SIZES
    text = read_heldout(args.calibration) if args.calibration else CALIBRATION_TEXT
    batches = text_batches(tokenizer, text, args.seq_len, args.max_tokens)
    with tqdm(total=2 * len(sizes) + 1, desc="choosing the int4 scheme", unit="candidate",
              dynamic_ncols=True) as bar:
        return choose_int4(model, batches, args.max_bits, sizes, not args.keep_embeddings, bar)


def quantise(model, tokenizer, args) -> tuple:
    """int8/int4: (quantised model, label, record for kdistill_quantization.json)."""
    vocab = ", vocab float)" if args.keep_embeddings else ", vocab int8)"
    if args.format == "int8":
        return quantize_model(model, "int8", embeddings=not args.keep_embeddings), "int8 (per channel" + vocab, {}
    choice = int4_choice(model, tokenizer, args)
    print(choice_table(choice))
    quantized = quantize_model(model, "int4", choice["group_size"], embeddings=not args.keep_embeddings,
                               clip=choice["clip"], int8_layers=choice["int8_layers"])
    label = (f"int4 (group {choice['group_size']}{', clipped' if choice['clip'] else ''}, "
             f"{len(choice['int8_layers'])} layers int8, {choice['bits']:.2f} bits/weight" + vocab)
    record = {"calibration_kl": choice["kl"], "calibration_top1": choice["top1"], "bits": choice["bits"],
              "candidates": [{k: v for k, v in r.items() if k != "int8_layers"} for r in choice["candidates"]]}
    return quantized, label, record


def check_args(args) -> None:
    """The option combinations that make no sense, before any model loads."""
    if args.type and args.format != "gguf":
        raise KdistillError(f"--type {args.type} is a GGUF tensor type; with --format {args.format} leave it out "
                            f"(or use --format gguf --type {args.type})")
    if args.format == "int4" and args.group_size:
        check_scheme("int4", args.group_size)
    if args.max_bits <= 4:
        raise KdistillError(f"--max-bits {args.max_bits}: int4 costs more than 4 bits a weight (its scales); "
                            "give at least 4.5 for groups of 32, 4.25 for 64")
    for path in (args.data, args.calibration):
        if path:
            read_heldout(path)  # DataError naming the file, before the model loads


def run_export(args) -> dict:
    """One export: writes the output and its model card, prints the table (and a warning when the KL is
    far above the type's bound); returns {out, format, card, report (None with --no-eval), warning}."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a command prints its table, not per-tensor progress bars
    logging.getLogger("gguf").setLevel(logging.WARNING)
    check_args(args)
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
        quantized, label, record = quantise(model, tokenizer, args)
        save_quantized(quantized, out, tokenizer, record)
        report = None if args.no_eval else quant_report(model, quantized, batches)
    kind = kind_of(args.format, args.type)
    print(format_table(out, label, report, kind))
    warning = None if report is None else kl_warning(kind, report["kl_mean"])
    if warning:
        print(warning, file=sys.stderr)
    card = write_export_card(model_dir, out, label, report)
    return {"out": str(out), "format": label, "card": str(card), "report": report, "warning": warning}


if __name__ == "__main__":  # python -m kdistill.export.cli ...
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(prog="kdistill export")
    add_arguments(parser)
    try:
        sys.exit(main(parser.parse_args()))
    except KdistillError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
