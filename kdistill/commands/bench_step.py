"""`kdistill bench step`: the KD step against the ceiling its two parts set, in one process.

    kdistill bench step                         # the demo workload: embedded teacher, 8-layer student, 8x128
    kdistill bench step --teacher DIR --layers 4 --batch 4 --seq 256 --steps 8

Times, alternated step by step so all three see the same machine load: the teacher's forward alone
(`source.signal` and its output layer, no grad), the student's forward + backward + optimizer step alone (cross-entropy on the
same batch, no teacher), and the full KD step (teacher signal + the config's loss + optimizer step). The
ceiling of a step that must do both parts is `1 / (1/teacher + 1/student)` in tokens/s, i.e. their times
added; the KD step's share of it is `(t_teacher + t_student) / t_kd` (1.0 = no cost beyond the parts).
Random token ids (a step's cost does not depend on the text); the first `--warmup` steps are left out.
"""
from __future__ import annotations

import statistics
import time


def _batches(vocab: int, batch: int, seq: int, count: int = 4) -> list[dict]:
    import torch

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (count * batch, seq + 1), generator=gen)
    return [{"input_ids": ids[i:i + batch, :-1], "attention_mask": torch.ones(batch, seq, dtype=torch.long),
             "targets": ids[i:i + batch, 1:], "mask": torch.ones(batch, seq, dtype=torch.bool)}
            for i in range(0, count * batch, batch)]


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(args) -> dict[str, list[float]]:
    """Seconds per step of each part; builds the teacher and student the way `distill` does."""
    import torch

    from kdistill.config.schema import load_config
    from kdistill.losses import build_objective
    from kdistill.sources import open_source
    from kdistill.students import build_student
    from kdistill.train.schedule import make_optimizer
    from kdistill.train.step import StudentLoss, train_step

    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    # a step's cost does not depend on the init: no layer choice, no residual-stream repair (start-up only)
    cfg = load_config(None, [f"teacher.model={args.teacher}", "student.layer_selection=first_last",
                             f"student.num_layers={args.layers}", "student.repair_steps=0"])
    source = open_source(cfg, cpu, torch.float32)
    vocab = source.vocab_size
    batches = _batches(vocab, args.batch, args.seq)
    torch.manual_seed(0)
    student, _ = build_student(cfg, source.init_model, vocab, batches[0], source.tokenizer)
    student.train()
    kd = build_objective(cfg.loss.terms, key="loss")
    ce = build_objective([{"kind": "ce", "weight": 1.0}], key="ce")
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg.train)

    def step(objective, teacher, batch):
        train_step(StudentLoss(student, objective), teacher, optimizer, [batch], cpu, 0.0, cfg.train.grad_clip)

    no_teacher = _NoTeacher()
    times = {"teacher forward": [], "student step": [], "KD step": []}
    for i in range(args.steps + args.warmup):
        batch = batches[i % len(batches)]
        got = {"teacher forward": _timed(lambda: _teacher_logits(source, batch, vocab)),
               "student step": _timed(lambda: step(ce, no_teacher, batch)),
               "KD step": _timed(lambda: step(kd, source, batch))}
        if i >= args.warmup:
            for k, v in got.items():
                times[k].append(v)
    return times


def _teacher_logits(source, batch: dict, vocab: int):
    """The teacher's whole forward, output layer included (a signal may keep its logits as hidden + weight
    until the loss reads them chunk by chunk). Shapes: batch (B, T) -> logits (B, T, V)"""
    signal = source.signal(batch, vocab)
    hidden = getattr(signal, "hidden", None)
    return signal.logits if hidden is None else hidden @ signal.weight.T


class _NoTeacher:
    """The student-alone step's source: cross-entropy needs no teacher signal."""

    def signal(self, batch, vocab):
        return None


def report(times: dict[str, list[float]], tokens: int) -> str:
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = [f"{'part':18s}{'s/step':>10s}{'tokens/s':>12s}"]
    lines += [f"{k:18s}{v:10.3f}{tokens / v:12.0f}" for k, v in med.items()]
    ceiling = med["teacher forward"] + med["student step"]
    lines.append(f"{'ceiling':18s}{ceiling:10.3f}{tokens / ceiling:12.0f}   1 / (1/teacher + 1/student)")
    lines.append(f"KD step: {ceiling / med['KD step']:.3f} of the ceiling "
                 f"({len(times['KD step'])} steps each, medians)")
    return "\n".join(lines)


def main(args) -> int:
    import os

    print(f"load average: {os.getloadavg()[0]:.2f} (a busy machine slows all three alike; compare shares)",
          flush=True)
    print(report(measure(args), args.batch * args.seq))
    return 0
