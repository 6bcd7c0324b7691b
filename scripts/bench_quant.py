"""int8 / int4 / GGUF Q8_0 / Q5_0 / Q4_0 of one student, measured the same way, in one table.

    python scripts/bench_quant.py                              # runs/demo/student, built-in held-out text
    python scripts/bench_quant.py --model DIR --data heldout.txt

Every export is measured as `kdistill export` measures it: mean KL(fp32 student || export) in
nats/token and top-1 agreement on the held-out text (256 tokens of kdistill's built-in paragraph unless
--data), the GGUF files read back through transformers' GGUF reader. int4 is chosen by `choose_int4` on
the separate calibration paragraph (the held-out text never picks it), at the default 5 bits a layer
weight and at Q4_0's 4.5. Two schemes kdistill does not offer are measured for the record (fake-quantised
in place, the same int8 vocabulary): the old min/max asymmetric int4 (Q4_1's layout) and asymmetric
int4 with an integer zero point (what compressed-tensors would store, which transformers 5.24 cannot load).
Sizes: the GGUF file, or the int folder's model.safetensors. Prints one table; needs no network.
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdistill.export import choose_int4, compare_logits, gguf_report, quantize_model, save_quantized  # noqa: E402
from kdistill.export.choose import dequantised  # noqa: E402
from kdistill.export.gguf_writer import load_student, write_gguf  # noqa: E402
from kdistill.export.measure import CALIBRATION_TEXT, HELD_OUT_TEXT, read_heldout, text_batches  # noqa: E402


def asymmetric(w: torch.Tensor, integer_zero: bool, group: int = 32) -> torch.Tensor:
    """Min/max asymmetric int4 per group (codes 0..15), fake-quantised. Shapes: w (O, I) -> (O, I)"""
    groups = w.float().reshape(w.shape[0], -1, group)
    low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    scale = ((high - low) / 15).half().float()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    if integer_zero:
        zero = torch.round(-low / scale).clamp(0, 15)
        return ((torch.round(groups / scale + zero).clamp(0, 15) - zero) * scale).reshape(w.shape)
    low = low.half().float()
    return (torch.round((groups - low) / scale).clamp(0, 15) * scale + low).reshape(w.shape)


def fake_row(model, held, name: str, fn) -> dict:
    """A scheme applied in place to a float copy (int8 vocabulary as kdistill's), measured."""
    work = copy.deepcopy(model)
    head = work.get_output_embeddings()
    with torch.no_grad():
        for module in work.modules():
            if isinstance(module, nn.Linear) and module is not head:
                module.weight.data = fn(module.weight.data)
        embed = work.get_input_embeddings()
        embed.weight.data = dequantised(embed.weight.data, "int8")
        if head.weight is not embed.weight:
            head.weight.data = dequantised(head.weight.data, "int8")
    return {"export": name, **compare_logits(model, work, held), "size": None, "seconds": None}


def int_row(model, tok, held, cal, tmp: Path, name: str, scheme: str, max_bits: float = 5.0) -> dict:
    start = time.perf_counter()
    if scheme == "int8":
        quant = quantize_model(model, "int8")
    else:
        choice = choose_int4(model, cal, max_bits)
        quant = quantize_model(model, "int4", choice["group_size"], clip=choice["clip"],
                               int8_layers=choice["int8_layers"])
        clipped = ", clipped" if choice["clip"] else ""
        name += (f" (group {choice['group_size']}{clipped}, {len(choice['int8_layers'])} layers int8, "
                 f"{choice['bits']:.2f} b/w)")
    seconds = time.perf_counter() - start
    out = save_quantized(quant, tmp / name.split()[0] / str(max_bits), tok)
    return {"export": name, **compare_logits(model, quant, held), "size": (out / "model.safetensors").stat().st_size,
            "seconds": seconds}


def gguf_row(model, tok, held, tmp: Path, qtype: str) -> dict:
    path = write_gguf(model, tok, tmp / f"s-{qtype}.gguf", qtype)
    report = gguf_report(model, path, held)
    return {"export": f"GGUF {qtype}", **report, "size": path.stat().st_size, "seconds": None}


def table(rows: list[dict], tokens: int) -> str:
    lines = [f"held-out tokens: {tokens}", f"{'export':<58} {'size MiB':>9} {'KL mean':>9} {'top-1':>7} {'chose in':>9}"]
    for r in rows:
        size = f"{r['size'] / 2**20:.1f}" if r["size"] else "-"
        took = f"{r['seconds']:.0f} s" if r["seconds"] else "-"
        lines.append(f"{r['export']:<58} {size:>9} {r['kl_mean']:>9.4f} {100 * r['top1_agreement']:>6.1f}% {took:>9}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/demo/student")
    parser.add_argument("--data", help="held-out UTF-8 text (default: kdistill's built-in paragraph)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model, tok = load_student(args.model)
    held = text_batches(tok, read_heldout(args.data) if args.data else HELD_OUT_TEXT, 128, 2048)
    cal = text_batches(tok, CALIBRATION_TEXT, 128, 2048)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = [int_row(model, tok, held, cal, tmp, "int8 (per channel)", "int8"),
                int_row(model, tok, held, cal, tmp, "int4", "int4", 5.0),
                int_row(model, tok, held, cal, tmp, "int4", "int4", 4.5)]
        rows += [gguf_row(model, tok, held, tmp, qtype) for qtype in ("Q8_0", "Q5_0", "Q4_0")]
    rows += [fake_row(model, held, "not offered: old min/max int4 (group 32)", lambda w: asymmetric(w, False)),
             fake_row(model, held, "not offered: int4, integer zero point (group 32)", lambda w: asymmetric(w, True))]
    print(table(rows, sum(b.numel() for b in held)))


if __name__ == "__main__":
    main()
