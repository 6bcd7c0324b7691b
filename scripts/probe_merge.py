"""Probe: merge the dropped teacher layers into the kept ones instead of dropping them (issue #19's
"merge adjacent layers" candidate), measured at step 0 before and after the residual-stream repair.

    python scripts/probe_merge.py 0,1,2,8,11,24,27,29 laco,avg 0.1,0.3

Each dropped layer joins the nearest kept layer before it; a kept layer's weights (norms excepted) become
- laco BETA: theta_l + BETA * sum_k (theta_k - theta_l)   (LaCo's layer collapse at BETA = 1), or
- avg BETA:  (1 - BETA) * theta_l + BETA * mean(theta_l, theta_k...);
`drop` is kdistill's plain copy. Prints held-out KL(teacher || student) on 24 held-out answers of the
cached 600-answer corpus (~/.cache/kdistill/generated/c6d652928347b520, which bench_quality.py --samples 600 writes), plain and after `repair_scales`
(20 steps on the run's 16 calibration rows). The layers are those `importance` chose for 8 layers.
"""
import copy
import json
import os
import sys
import time

import torch

torch.set_num_threads(1)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from kdistill.data import batches as B
from kdistill.models.heads import decoder, decoder_layers, head_weight
from kdistill.models.teacher import load_teacher
from kdistill.students.repair import repair_scales, teacher_targets

recs = [json.loads(l) for l in open(os.path.expanduser("~/.cache/kdistill/generated/c6d652928347b520/records.jsonl"))]
ex = [{"ids": r["ids"][:129], "mask": [j >= r["n_prompt"] for j in range(len(r["ids"][:129]))]} for r in recs]
train, held = B.split(ex, 0.1, 0)
model, tok, _ = load_teacher("default", torch.device("cpu"), torch.float32)
model.eval().requires_grad_(False)
pad = tok.pad_token_id
calib = B.collate(train[:16], pad)
ev = B.collate(held[:24], pad)
layers = [int(x) for x in sys.argv[1].split(",")]
W = head_weight(model).detach()
t_ev = teacher_targets(model, ev, W)
t_cal = teacher_targets(model, calib, W)
full = decoder_layers(model)
n = len(full)

def groups(kind):
    # each dropped layer goes to the nearest kept layer before it ("prev")
    g = {l: [] for l in layers}
    for d in range(n):
        if d in layers: continue
        before = [l for l in layers if l < d]
        g[before[-1] if before else layers[0]].append(d)
    return g

def merged(beta, mode):
    g = groups("prev")
    out = []
    for l in layers:
        layer = copy.deepcopy(full[l])
        sd = layer.state_dict()
        for k, v in sd.items():
            if "layernorm" in k: continue
            others = [full[d].state_dict()[k] for d in g[l]]
            if not others: continue
            if mode == "laco":
                v += beta * sum(o - v for o in others)
            elif mode == "avg":  # interpolate towards the group mean
                mean = (v + sum(others)) / (1 + len(others))
                v.mul_(1 - beta).add_(beta * mean)
        out.append(layer)
    return out

def student_with(ls):
    s = copy.deepcopy(model)
    decoder(s).layers = torch.nn.ModuleList(ls)
    s.config.num_hidden_layers = len(ls)
    return s

def kl_of(s, tg, batch):
    with torch.no_grad():
        h = decoder(s)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
    return tg.kl(h[batch["mask"].bool()])

variants = [("drop", 0, "laco")] + [(f"{m}{b}", b, m) for m in sys.argv[2].split(",") for b in [float(x) for x in sys.argv[3].split(",")]]
for name, beta, mode in variants:
    t0 = time.time()
    s = student_with(merged(beta, mode))
    k0 = kl_of(s, t_ev, ev)
    rep = repair_scales(s, calib, t_cal, steps=20)
    k1 = kl_of(s, t_ev, ev)
    print(f"{name:10s} heldout KL plain {k0:.3f}  repaired {k1:.3f}  (calib {rep['calibration_kl_before']:.3f}->{rep['calibration_kl_after']:.3f}) {time.time()-t0:.0f}s", flush=True)
