"""`kdistill map-layers`: which teacher layer each student layer should learn from, measured.

    kdistill map-layers --teacher default --student runs/demo/student --data notes.txt --out runs/layer_map

Linear CKA between every student and teacher block on calibration tokens (what each block adds to the
residual stream: `layer_map`), then the best order-keeping mapping by dynamic programming. Writes
OUT/layer_map.yaml (the pairs as a loss-term snippet to paste under loss.terms), OUT/layer_map.json (the
matrix and the pairs) and OUT/layer_map.png (a heat map with the chosen pairs marked, when matplotlib
is installed). `pairs: cka` in a loss term does the same at the start of a run. OUT follows the output
rule (kdistill/base/outputs.py): a map written there before is refreshed, anything else needs --force,
never an input or a run folder; checked before any model loads, written beside OUT and renamed.
"""
from __future__ import annotations

from pathlib import Path

import torch

from kdistill.base import fsutil
from kdistill.base.errors import ConfigError, ModelError
from kdistill.base.outputs import check_output, mark_own
from kdistill.models.files import check_model_folder
from kdistill.students.layer_map import cka_map

SAMPLE = ["Once upon a time there was a little fox who lived in the forest and liked to read.",
          "The capital of France is Paris; it lies on the Seine and has about two million people.",
          "To bake bread, mix flour, water, salt and yeast, knead it, let it rise, then bake it hot.",
          "def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # 5",
          "Water boils at one hundred degrees Celsius at sea level, and at less on a high mountain."]


def calibration_batch(tokenizer, data: str | None, tokens: int, seq_len: int) -> dict:
    """Rows of `data` (any file `data.path` reads) or of a few built-in sentences, up to `tokens` tokens."""
    from kdistill.data.batches import collate
    from kdistill.data.files import read_records
    from kdistill.data.render import render

    records = read_records(data) if data else [{"text": t} for t in SAMPLE]
    examples = render(records, tokenizer, seq_len, "auto", "auto", data or "built-in sample")
    picked, total = [], 0
    for e in examples:
        if total >= tokens:
            break
        picked.append(e)
        total += sum(e["mask"][1:])
    if not picked:
        raise ConfigError(f"--data {data}: no text to measure on")
    return collate(picked, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)


def heat_map(sim: torch.Tensor, pairs: list, path: Path) -> bool:
    """A PNG of the CKA matrix with the chosen pairs marked; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(max(4, sim.shape[1] * 0.25 + 2), max(3, sim.shape[0] * 0.25 + 1.5)))
    image = ax.imshow(sim.numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.scatter([t for _, t in pairs], [s for s, _ in pairs], marker="s", facecolors="none", edgecolors="red")
    ax.set_xlabel("teacher layer")
    ax.set_ylabel("student layer")
    ax.set_title("linear CKA of block updates (red: chosen pairs)")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def snippet(pairs: list, command: str) -> str:
    body = ", ".join(f"[{s}, {t}]" for s, t in pairs)
    return (f"# written by: {command}\n# paste under loss.terms (or use pairs: cka to measure at run start)\n"
            f"- {{kind: hidden_mse, weight: 1.0, pairs: [{body}]}}\n")


def main(args) -> int:
    from transformers import AutoModelForCausalLM

    from kdistill.models.teacher import load_teacher
    from kdistill.students.pretrained import student_folder

    inputs = [p for p in (args.teacher, args.student, args.data) if p and Path(p).exists()]
    out = Path(args.out)
    check_output(out, getattr(args, "force", False), inputs, "--out", own="map-layers")
    device = torch.device("cpu")
    teacher, tokenizer, _ = load_teacher(args.teacher, device, torch.float32)
    folder = student_folder(args.student, None)
    local = Path(folder).is_dir()  # else a hub id, which transformers reads (offline: from its cache)
    use_safetensors = check_model_folder(folder, "--student") if local else True
    try:
        student = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, trust_remote_code=False,
                                                       use_safetensors=use_safetensors).eval()
    except (OSError, ValueError) as e:
        raise ModelError(f"--student {args.student}: cannot load it ({e}); give a model folder written by "
                         "save_pretrained, a kdistill run folder, or a hub id already in the Hugging Face "
                         "cache") from e
    batch = calibration_batch(tokenizer, args.data, args.tokens, args.seq_len)
    pairs, sim = cka_map(student, teacher.eval(), batch)
    command = f"kdistill map-layers --teacher {args.teacher} --student {args.student}" + (
        f" --data {args.data}" if args.data else "")
    with fsutil.atomic_dir(out) as tmp:
        fsutil.write_text(tmp / "layer_map.yaml", snippet(pairs, command))
        fsutil.write_json(tmp / "layer_map.json", {"pairs": [list(p) for p in pairs], "cka": sim.tolist(),
                                                   "tokens": int(batch["mask"].sum()), "command": command})
        drew = heat_map(sim, pairs, tmp / "layer_map.png")
        mark_own(tmp, "map-layers")
    print(f"{sim.shape[0]} student x {sim.shape[1]} teacher layers, CKA on {int(batch['mask'].sum())} tokens")
    for s, t in pairs:
        print(f"  student {s:>2} <- teacher {t:>2}  (CKA {float(sim[s, t]):.3f})")
    print(f"wrote {out / 'layer_map.yaml'}, layer_map.json" + (", layer_map.png" if drew else
                                                              " (no heat map: pip install matplotlib)"))
    return 0
