"""`kdistill export`: a student folder -> GGUF for llama.cpp, or int8/int4 safetensors for PyTorch.

Every export is measured before the command returns: the output is loaded back (GGUF through
transformers' own GGUF reader) and its logits compared with the float student on held-out text.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import KdistillError
from .gguf_writer import QTYPES, load_student, write_gguf
from .measure import HELD_OUT_TEXT, gguf_report, quant_report, read_heldout, text_batches
from .quant_io import save_quantized
from .quantize import SCHEMES, quantize_model

EPILOG = """\
examples:
  # GGUF for llama.cpp / llama-cpp-python (F32, F16, Q8_0, Q5_0 or Q4_0)
  kdistill export --model runs/student/final --format gguf --type Q4_0 --out student-q4_0.gguf
  # int4 (group 32) safetensors folder, KL measured on your own held-out text
  kdistill export --model runs/student/final --format int4 --out student-int4 --data heldout.txt
  # load it back in Python
  python -c "from kdistill.export import load_quantized; m = load_quantized('student-int4')"

The table reports the output size, the memory saved against the fp32 weights, and the mean per-token
KL(fp32 student || exported) and top-1 agreement on held-out text (a built-in paragraph unless --data).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = parser.description or __doc__.splitlines()[0].split(": ", 1)[1]
    parser.epilog = EPILOG
    parser.add_argument("--model", required=True, help="student folder (HF LlamaForCausalLM + tokenizer)")
    parser.add_argument("--format", required=True, choices=("gguf", *SCHEMES), help="output format")
    parser.add_argument("--type", choices=QTYPES, help="GGUF tensor type (default F16)")
    parser.add_argument("--out", help="output .gguf file or folder (default: beside --model, named by type)")
    parser.add_argument("--group-size", type=int, default=32, help="int4 group length (default 32)")
    parser.add_argument("--keep-embeddings", action="store_true",
                        help="int8/int4: keep the token embedding and output head in float (default int8)")
    parser.add_argument("--data", help="held-out UTF-8 text for the KL measurement")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per measured sequence (default 128)")
    parser.add_argument("--max-tokens", type=int, default=2048, help="held-out tokens measured (default 2048)")
    parser.add_argument("--no-eval", action="store_true", help="skip loading the output back and measuring")


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
    return 0


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
