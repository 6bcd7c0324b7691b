"""Probe: fit a student's kept teacher layers, before training, to the spans of teacher layers they stand for.

    ROWS=64 python scripts/probe_span.py 0,1,2,8,11,24,27,29 0:0:16:span 20:3e-4:16:span 20:3e-4:16:init

A student of teacher layers k_0 < k_1 < ... keeps block j where the teacher ran layers k_j .. k_{j+1}-1;
block j's output should be what the teacher's stream is on entering layer k_{j+1} (the last block's: the
teacher's final stream). Each STEPS:LR:ROWS_PER_STEP:PAIRS fits every decoder weight of the student
(and the final norm) by Adam at a constant LR to that stream, as the next block reads it (normed: the
next block's input norm, gains included), mean squared error per layer over its target's mean energy;
PAIRS `span` targets the teacher layer before the next kept one, `init` the layer each block was copied
from (the `from_init` pairing). Steps draw ROWS_PER_STEP rows in turn from the first ROWS training answers
of the cached 600-answer corpus. Then the run's repair (20 steps, 16 rows) and the held-out KL on 24
held-out answers: before the fit, after it, after the repair.
"""
import copy
import json
import os
import sys
import time

import torch

torch.set_num_threads(int(os.environ.get("THREADS", "1")))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from kdistill.data import batches as B
from kdistill.models.activations import capture
from kdistill.models.heads import decoder, decoder_layers, head_weight
from kdistill.models.teacher import load_teacher
from kdistill.students.repair import repair_scales, teacher_targets

corpus = os.environ.get("CORPUS") or max(
    (p for p in os.scandir(os.path.expanduser("~/.cache/kdistill/generated")) if p.is_dir()),
    key=lambda p: sum(1 for _ in open(os.path.join(p.path, "records.jsonl")))).path
recs = [json.loads(l) for l in open(os.path.join(corpus, "records.jsonl"))]
ex = [{"ids": r["ids"][:129], "mask": [j >= r["n_prompt"] for j in range(len(r["ids"][:129]))]} for r in recs]
train, held = B.split(ex, 0.1, 0)
model, tok, _ = load_teacher("default", torch.device("cpu"), torch.float32)
model.eval().requires_grad_(False)
pad = tok.pad_token_id
pool = train[:int(os.environ.get("ROWS", 64))]
ev = B.collate(held[:24], pad)
layers = [int(x) for x in sys.argv[1].split(",")]
n_teacher = len(decoder_layers(model))
W = head_weight(model).detach()
t_ev = teacher_targets(model, ev, W)
full = decoder_layers(model)
print(f"corpus {corpus} ({len(recs)} records), pool {len(pool)} rows, layers {layers}", flush=True)


def student():
    s = copy.deepcopy(model)
    decoder(s).layers = torch.nn.ModuleList([copy.deepcopy(full[l]) for l in layers])
    s.config.num_hidden_layers = len(layers)
    return s


def kl_of(s):
    with torch.no_grad():
        h = decoder(s)(input_ids=ev["input_ids"], attention_mask=ev["attention_mask"], use_cache=False).last_hidden_state
    return t_ev.kl(h[ev["mask"].bool()])


def pairs_of(mode):
    if mode == "span":
        return [(j, (layers[j + 1] - 1) if j + 1 < len(layers) else n_teacher - 1) for j in range(len(layers))]
    return list(enumerate(layers))


def teacher_streams(batch, pairs):
    """{teacher layer: (N, D)} the normed stream at the batch's real tokens."""
    with torch.no_grad(), capture(model, {t: ("normed",) for _, t in pairs}) as found:
        model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    real = batch["attention_mask"].bool()
    return {t: found[t]["normed"][real] for _, t in pairs}


def fit(s, steps, lr, per_step, mode):
    pairs = pairs_of(mode)
    chunks = [B.collate(pool[i:i + per_step], pad) for i in range(0, len(pool), per_step)]
    targets = [teacher_streams(c, pairs) for c in chunks]
    energy = {t: torch.stack([tg[t].pow(2).sum(-1).mean() for tg in targets]).mean() for _, t in pairs}
    params = [p for p in decoder(s).layers.parameters()] + list(decoder(s).norm.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    hist = []
    for step in range(steps):
        c, tg = chunks[step % len(chunks)], targets[step % len(chunks)]
        real = c["attention_mask"].bool()
        with capture(s, {j: ("normed",) for j, _ in pairs}) as found:
            decoder(s)(input_ids=c["input_ids"], attention_mask=c["attention_mask"], use_cache=False)
        loss = sum((found[j]["normed"][real] - tg[t]).pow(2).sum(-1).mean() / energy[t] for j, t in pairs) / len(pairs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        hist.append(round(loss.item(), 4))
    s.requires_grad_(False)
    return hist


calib = B.collate(train[:16], pad)
t_cal = teacher_targets(model, calib, W)
for spec in sys.argv[2:]:
    steps, lr, per_step, mode = spec.split(":")
    t0 = time.time()
    s = student()
    k0 = kl_of(s)
    hist = fit(s, int(steps), float(lr), int(per_step), mode)
    k1 = kl_of(s)
    t1 = time.time()
    rep = repair_scales(s, calib, t_cal, steps=20)
    k2 = kl_of(s)
    print(f"{spec}: held-out KL copy {k0:.3f} -> fit {k1:.3f} -> repair {k2:.3f} | fit loss {hist[:1]}..{hist[-1:]} "
          f"fit {t1 - t0:.0f}s repair {time.time() - t1:.0f}s (calib KL {rep['calibration_kl_before']}->{rep['calibration_kl_after']})",
          flush=True)
