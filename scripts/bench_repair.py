"""The residual-stream repair's cost: its logsumexp through the fused output layer (now) against the
checkpointed chunks it used before, alternated in one process on the demo's student.

    python scripts/bench_repair.py                 # 8 of the embedded teacher's layers, 16 x 128 ids, 3 steps
    python scripts/bench_repair.py --layers 4 --steps 5 --rounds 3

Both fit the same scales (the printed calibration KL must match); only the time differs. Random ids
(the cost does not depend on the text), 1 thread; check `uptime` first.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.utils.checkpoint
from torch import nn

from kdistill.models.heads import decoder, decoder_layers, head_weight
from kdistill.models.teacher import load_teacher
from kdistill.students import repair
from kdistill.students.init import even_layers


def checkpointed_lse(hidden: torch.Tensor, weight: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """The previous logsumexp: each chunk's logits recomputed in backward. Shapes: (N, D), (V, D) -> ()"""
    def block(h):
        return repair._wide(h @ weight.T).logsumexp(-1).sum()

    return sum(torch.utils.checkpoint.checkpoint(block, hidden[i:i + chunk], use_reentrant=False)
               for i in range(0, hidden.shape[0], chunk))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    teacher, _, _ = load_teacher("default", torch.device("cpu"), torch.float32)
    ids = torch.randint(0, teacher.config.vocab_size, (args.rows, args.seq), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mask": torch.ones_like(ids, dtype=torch.bool)}
    student = copy.deepcopy(teacher)
    kept = even_layers(len(decoder_layers(teacher)), args.layers)
    decoder(student).layers = nn.ModuleList([decoder(student).layers[i] for i in kept])
    student.config.num_hidden_layers = args.layers
    targets = repair.teacher_targets(teacher, batch, head_weight(student))
    start_state = copy.deepcopy(student.state_dict())
    fused = repair._lse
    for _ in range(args.rounds):
        for name, lse in (("checkpointed", checkpointed_lse), ("fused", fused)):
            student.load_state_dict(start_state)
            repair._lse = lse
            t0 = time.perf_counter()
            r = repair.repair_scales(student, batch, targets, steps=args.steps)
            print(f"{name:<13} {time.perf_counter() - t0:7.2f} s   calibration KL {r['calibration_kl_before']} -> "
                  f"{r['calibration_kl_after']}", flush=True)
    repair._lse = fused


if __name__ == "__main__":
    main()
