"""Export a student folder: GGUF for llama.cpp, or int8/int4 safetensors for PyTorch (`kdistill export`).

    result = export_model(ExportSettings(model="runs/demo/student", format="gguf", type="Q8_0"))

Every export is measured before the command returns: the output is loaded back (GGUF through
transformers' own GGUF reader) and its logits compared with the float student on held-out text.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from kdistill.base.errors import KdistillError
from kdistill.base.outputs import check_output
from kdistill.export.bounds import EXPECTED_KL, kind_of, kl_warning
from kdistill.export.gguf_writer import load_student, write_gguf
from kdistill.export.measure import (
    CALIBRATION_TEXT,
    HELD_OUT_TEXT,
    gguf_report,
    quant_report,
    read_heldout,
    text_batches,
)
from kdistill.export.quant_io import save_quantized
from kdistill.export.quantize import GROUP_SIZES, check_scheme, quantize_model
from kdistill.report.model_card import write_export_card


@dataclass
class ExportSettings:
    """What one export does (the options of `kdistill export`, kdistill/commands/args.py)."""
    model: str                      # the student folder
    format: str                     # gguf | int8 | int4
    type: str | None = None         # GGUF tensor type: F32, F16 (default), Q8_0, Q5_0, Q4_0
    out: str | None = None          # default: beside the model folder, named after it and the format
    group_size: int | None = None   # int4: fix the group size instead of choosing it by KL
    max_bits: float = 5.0           # int4: the most bits a weight may cost (scales and int8 layers included)
    calibration: str | None = None  # int4: text the scheme is chosen on (default: a built-in paragraph)
    keep_embeddings: bool = False   # int8/int4: keep the embedding/output matrix in float
    data: str | None = None         # held-out text the export is measured on (default: a built-in paragraph)
    seq_len: int = 128
    max_tokens: int = 2048
    measure: bool = True            # load the output back and measure KL(fp32 || export)
    force: bool = False             # replace an existing output (never the model itself or a run folder)


def default_out(model_dir: Path, args: ExportSettings) -> Path:
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


def int4_choice(model, tokenizer, args: ExportSettings) -> dict:
    """choose_int4 on the calibration text (--calibration, else a built-in paragraph), with a bar."""
    from tqdm.auto import tqdm

    from kdistill.export.choose import choose_int4

    sizes = (args.group_size,) if args.group_size else GROUP_SIZES
    text = read_heldout(args.calibration) if args.calibration else CALIBRATION_TEXT
    batches = text_batches(tokenizer, text, args.seq_len, args.max_tokens)
    with tqdm(total=2 * len(sizes) + 1, desc="choosing the int4 scheme", unit="candidate",
              dynamic_ncols=True) as bar:
        return choose_int4(model, batches, args.max_bits, sizes, not args.keep_embeddings, bar)


def quantise(model, tokenizer, args: ExportSettings) -> tuple:
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


def check_args(args: ExportSettings) -> None:
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


def export_model(args: ExportSettings) -> dict:
    """One export: writes the output and its model card, prints the table (and a warning when the KL is
    far above the type's bound); returns {out, format, card, report (None with --no-eval), warning}."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a command prints its table, not per-tensor progress bars
    logging.getLogger("gguf").setLevel(logging.WARNING)
    check_args(args)
    args = dataclasses.replace(args, type=args.type or "F16")
    model_dir = Path(args.model)
    out = Path(args.out) if args.out else default_out(model_dir, args)
    check_output(out, args.force, [p for p in (args.model, args.data, args.calibration) if p],
                 "--out" if args.out else "--out (default, beside --model)")
    text = read_heldout(args.data) if args.data else HELD_OUT_TEXT
    model, tokenizer = load_student(model_dir, llama_only=args.format == "gguf")
    batches = None if not args.measure else text_batches(tokenizer, text, args.seq_len, args.max_tokens)
    if args.format == "gguf":
        write_gguf(model, tokenizer, out, args.type, model_dir.resolve().name, str(model_dir))
        label = f"GGUF {args.type}"
        report = None if not args.measure else gguf_report(model, out, batches)
    else:
        quantized, label, record = quantise(model, tokenizer, args)
        save_quantized(quantized, out, tokenizer, record)
        report = None if not args.measure else quant_report(model, quantized, batches)
    kind = kind_of(args.format, args.type)
    print(format_table(out, label, report, kind))
    warning = None if report is None else kl_warning(kind, report["kl_mean"])
    if warning:
        print(warning, file=sys.stderr)
    card = write_export_card(model_dir, out, label, report)
    return {"out": str(out), "format": label, "card": str(card), "report": report, "warning": warning}

