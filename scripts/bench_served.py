"""A teacher on a vLLM server against the same teacher in the trainer's process, step for step, in one run.

    make teacher-server PORT=8000 &          # or any vLLM server of the embedded teacher
    python scripts/bench_served.py --server http://127.0.0.1:8000/v1 --steps 12

Same student (the teacher's width, --layers layers, random init), batches (teacher-written demo data, or
--data FILE), loss (forward KL + 0.1 CE on the teacher's top --k) and optimizer for every row; the rows
alternate step by step so they see the same machine load:
- `in-process`: the local teacher's forward, then the student's step (dense signal cut to top-k);
- `student only`: the student's step on a signal asked for beforehand (what a step costs with no teacher);
- `teacher only`: the server's answer for one batch, asked for when needed (no overlap);
- `served`: the run's own path: requests start when a batch is made, --prefetch batches ahead;
then `served, back to back`: the same path for --steps more steps on its own (in the alternation the
prefetched requests also overlap the other rows). Its bound is max(teacher only, student only); the sum
is what no overlap would cost.
Median seconds per step over steps 2..N (step 1 of each warms up). On a 2-core CPU the server and the
trainer share the cores: quote the machine and `uptime` with the numbers.

Then teacher-written data (`data.generate`'s path, data/teacher_written.py): --gen-prompts built-in prompts
continued by --gen-tokens sampled tokens, in the trainer's process (batches of --gen-batch, left-padded
`generate`) and through the server's completions (every prompt of the batch in flight at once), alternated
--gen-rounds times; new tokens per second of each.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdistill.base.hardware import set_threads  # noqa: E402
from kdistill.config.schema import load_config  # noqa: E402
from kdistill.data import batches as batching  # noqa: E402
from kdistill.data import teacher_written  # noqa: E402
from kdistill.losses import SparseSignal, build_objective  # noqa: E402
from kdistill.sources.model import ModelSource  # noqa: E402
from kdistill.sources.served import ServedSource  # noqa: E402
from kdistill.sources.server_writer import ServerWriter  # noqa: E402
from kdistill.students import build_student  # noqa: E402
from kdistill.train.schedule import make_optimizer  # noqa: E402
from kdistill.train.step import StudentLoss, train_step  # noqa: E402


class Given:
    """A source whose signals were asked for beforehand: the student's step alone."""

    def __init__(self, signal):
        self.given = signal

    def signal(self, batch, vocab_size):
        return self.given


class TopK:
    """The local teacher, its dense signal cut to the top k as the server's is."""

    def __init__(self, model_source, k: int):
        self.source, self.k = model_source, k

    def signal(self, batch, vocab_size):
        dense = self.source.signal(batch, vocab_size)
        logits = dense.logits if dense.logits is not None else dense.hidden @ dense.weight.T
        return SparseSignal.from_logits(logits, self.k)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", required=True, help="the vLLM server's URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--server-model", default="teacher")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--prefetch", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", help="a text file (default: the demo's teacher-written data)")
    p.add_argument("--gen-prompts", type=int, default=32, help="prompts for the data-writing rows (0: none)")
    p.add_argument("--gen-tokens", type=int, default=48)
    p.add_argument("--gen-batch", type=int, default=16, help="prompts per batch (data.generate.batch_size)")
    p.add_argument("--gen-rounds", type=int, default=2)
    a = p.parse_args()
    set_threads(a.threads)
    cfg = load_config("configs/demo.yaml", [
        f"teacher.server={a.server}", f"teacher.server_model={a.server_model}", f"teacher.server_top_k={a.k}",
        f"teacher.server_prefetch={a.prefetch}", f"train.batch_size={a.batch}", f"train.seq_len={a.seq_len}",
        f"student.num_layers={a.layers}", "student.init=random", *([f"data.path={a.data}"] if a.data else [])])
    device = torch.device("cpu")
    served = ServedSource.open(cfg, device, torch.float32)  # the parity check runs here
    local = TopK(ModelSource(served.init_model, served.tokenizer, served.folder, "default"), a.k)
    examples = served.load_examples(cfg, device)
    # the rows see the same batches: the ones that ask the server outside the run's path get a source of their
    # own, so they never take the answers the `served` row asked for ahead
    asker = ServedSource(served.client, served.k, served.tokenizer, served.config, None, served.folder, "default",
                         prefetch=0)
    pad = served.tokenizer.pad_token_id
    student, _ = build_student(cfg, served.init_model, served.vocab_size, tokenizer=served.tokenizer)
    objective = build_objective(cfg.loss.terms, key="loss")
    rows = ("in-process", "student only", "teacher only", "served")
    students = {r: copy.deepcopy(student) for r in rows}
    opts = {r: make_optimizer([q for q in students[r].parameters() if q.requires_grad], cfg.train) for r in rows}
    streams = {r: batching.BatchStream(examples, a.batch, cfg.train.seed, pad,
                                       collate_fn=(lambda picked: served.collate(picked, pad)) if r == "served"
                                       else None) for r in rows}
    streams["served"] = batching.Lookahead(streams["served"], a.prefetch)
    times = {r: [] for r in rows}
    for step in range(a.steps):
        for r in rows:
            batch = streams[r].next()
            if r == "student only":
                signals = Given(asker.signal(batch, served.vocab_size))
                start = time.perf_counter()
                train_step(StudentLoss(students[r], objective), signals, opts[r], [batch], device, 0.0, 1.0)
            elif r == "teacher only":
                start = time.perf_counter()
                asker.signal(batch, served.vocab_size)
            else:
                source = local if r == "in-process" else served
                start = time.perf_counter()
                train_step(StudentLoss(students[r], objective), source, opts[r], [batch], device, 0.0, 1.0)
            times[r].append(time.perf_counter() - start)
        print(f"step {step + 1}: " + "  ".join(f"{r} {times[r][-1]:.3f}s" for r in rows), flush=True)
    # the alternation gives the served row's requests the other rows' time to finish in: the run's own
    # steady state is the served row alone, back to back
    times["served, back to back"] = []
    for _ in range(a.steps):
        batch = streams["served"].next()
        start = time.perf_counter()
        train_step(StudentLoss(students["served"], objective), served, opts["served"], [batch], device, 0.0, 1.0)
        times["served, back to back"].append(time.perf_counter() - start)
    rows = (*rows, "served, back to back")
    med = {r: statistics.median(times[r][1:]) for r in rows}
    bound, total = max(med["teacher only"], med["student only"]), med["teacher only"] + med["student only"]
    print(f"\nmedian s/step over steps 2..{a.steps} (batch {a.batch} x {a.seq_len}, top-{a.k}, "
          f"{a.layers}-layer student, {a.threads} thread(s)):")
    for r in rows:
        print(f"  {r:<21} {med[r]:.3f}")
    alone = med["served, back to back"]
    print(f"  bound max(teacher, student) {bound:.3f}; sum {total:.3f}; served back to back / bound {alone / bound:.2f}; "
          f"/ in-process {alone / med['in-process']:.2f}")
    if a.gen_prompts:
        bench_writing(served, a)


def bench_writing(served: ServedSource, a) -> None:
    """New tokens/s of the teacher writing data in the trainer's process and through the server."""
    tok, model = served.tokenizer, served.init_model
    prompts = teacher_written.builtin_prompts(tok, a.gen_prompts)
    settings = {"max_new_tokens": a.gen_tokens, "temperature": 0.8, "top_p": 0.95, "batch_size": a.gen_batch,
                "seed": 0}
    writer = ServerWriter(served.client, {tok.eos_token_id})
    tok.padding_side = "left"

    def in_process(chunk, b):
        torch.manual_seed(b)
        return teacher_written._generate_batch(model, tok, chunk, settings, torch.device("cpu"))

    ways = {"in-process": in_process, "server": lambda chunk, b: writer.write_batch(chunk, settings, b)}
    tokens, seconds = {w: 0 for w in ways}, {w: 0.0 for w in ways}
    for _ in range(a.gen_rounds):
        for name, write in ways.items():
            for b in range(0, len(prompts), a.gen_batch):
                start = time.perf_counter()
                rows = write(prompts[b:b + a.gen_batch], b)
                seconds[name] += time.perf_counter() - start
                tokens[name] += sum(map(len, rows))
    rate = {w: tokens[w] / seconds[w] for w in ways}
    print(f"\nteacher-written data, {a.gen_prompts} prompts x up to {a.gen_tokens} new tokens, batches of "
          f"{a.gen_batch}, {a.gen_rounds} rounds alternated:")
    for w in ways:
        print(f"  {w:<11} {tokens[w]:>6} tokens in {seconds[w]:7.2f}s: {rate[w]:7.1f} tokens/s")
    print(f"  server / in-process {rate['server'] / rate['in-process']:.2f}")


if __name__ == "__main__":
    main()
