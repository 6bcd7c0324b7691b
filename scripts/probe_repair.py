"""Probe: variants of the residual-stream repair (kdistill/students/repair.py) at step 0: more steps,
per-channel output scales instead of one per o_proj/down_proj, more calibration rows.

    ROWS=16 python scripts/probe_repair.py 0,1,2,8,11,24,27,29 20:0.05:1 60:0.05:0 60:0.05:1
    ROWS=64 python scripts/probe_repair.py 0,1,2,8,11,24,27,29 20:0.05:0 40:0.05:0

Each STEPS:LR:PER_CHANNEL fits the repair's log-scales by Adam on the first ROWS training answers of the
cached 600-answer corpus (~/.cache/kdistill/generated/c6d652928347b520, from bench_quality.py --samples 600; a run uses 16) and prints the
held-out KL on 24 held-out answers with the calibration KL's history (every 5 steps).
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
from kdistill.students.repair import _kl, _names, _norms, _outputs, teacher_targets

recs = [json.loads(l) for l in open(os.path.expanduser("~/.cache/kdistill/generated/c6d652928347b520/records.jsonl"))]
ex = [{"ids": r["ids"][:129], "mask": [j >= r["n_prompt"] for j in range(len(r["ids"][:129]))]} for r in recs]
train, held = B.split(ex, 0.1, 0)
model, tok, _ = load_teacher("default", torch.device("cpu"), torch.float32)
model.eval().requires_grad_(False)
pad = tok.pad_token_id
calib = B.collate(train[:int(os.environ.get("ROWS", 16))], pad)
ev = B.collate(held[:24], pad)
layers = [int(x) for x in sys.argv[1].split(",")]
W = head_weight(model).detach()
t_ev = teacher_targets(model, ev, W)
t_cal = teacher_targets(model, calib, W)
full = decoder_layers(model)

def student():
    s = copy.deepcopy(model)
    decoder(s).layers = torch.nn.ModuleList([copy.deepcopy(full[l]) for l in layers])
    s.config.num_hidden_layers = len(layers)
    return s

def kl_of(s, tg, batch):
    with torch.no_grad():
        h = decoder(s)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
    return tg.kl(h[batch["mask"].bool()])

def repair(student, batch, targets, steps, lr, per_channel):
    inner = decoder(student)
    norms, outputs = _norms(student), _outputs(student)
    gain_names = [f"{n}.weight" for n in _names(inner, norms)]
    out_names = _names(inner, outputs)
    gains0 = [n.weight.detach().clone() for n in norms]
    outs0 = {f"{n}.weight": m.weight.detach().clone() for n, m in zip(out_names, outputs)}
    log_gain = [torch.zeros(g.shape, requires_grad=True) for g in gains0]
    D = gains0[0].shape[0]
    log_out = torch.zeros((len(outputs), D) if per_channel else (len(outputs), 1), requires_grad=True)
    keep = batch["mask"].bool()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
    def fitted(gain, out):
        found = {name: g0 * s.exp() for name, g0, s in zip(gain_names, gains0, gain)}
        for k, name in enumerate(out_names):
            found[f"{name}.weight"] = outs0[f"{name}.weight"] * out[k].exp()[:, None]
        return found
    student.requires_grad_(False).eval()
    opt = torch.optim.Adam(log_gain + [log_out], lr=lr)
    hist=[]; best=None
    for step in range(steps + 1):
        hidden = torch.func.functional_call(inner, fitted(log_gain, log_out), args=(), kwargs=inputs)
        loss = _kl(targets, hidden.last_hidden_state[keep])
        hist.append(loss.item())
        if hist[-1] <= min(hist): best = ([g.detach().clone() for g in log_gain], log_out.detach().clone())
        if step == steps: break
        opt.zero_grad(); loss.backward(); opt.step()
    with torch.no_grad():
        for name, value in fitted(*best).items():
            inner.get_parameter(name).copy_(value)
    return hist

for spec in sys.argv[2:]:
    steps, lr, pc = spec.split(":")
    t0 = time.time()
    s = student()
    hist = repair(s, calib, t_cal, int(steps), float(lr), pc == "1")
    k1 = kl_of(s, t_ev, ev)
    print(f"steps {steps} lr {lr} per_channel {pc}: heldout {k1:.3f} calib {hist[0]:.3f}->{min(hist):.3f} hist {[round(h,2) for h in hist[::5]]} {time.time()-t0:.0f}s", flush=True)
