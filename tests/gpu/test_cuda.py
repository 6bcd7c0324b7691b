"""The CUDA path, run where a GPU exists (CI has none, so these skip there): bf16 teacher with SDPA,
bf16 autocast training through the fused loss, the teacher cache written on the GPU, a whole distill run.

Each GPU result is compared with the same computation in fp32 on the CPU, the reference path.
"""
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kdistill.base.hardware import autocast, pick_device, pick_dtype
from kdistill.cache.reader import open_cache
from kdistill.config.schema import load_config
from kdistill.losses import DenseSignal, SparseSignal, build_objective
from kdistill.models.teacher import load_teacher
from kdistill.run.cache import write_cache
from kdistill.run.distill import distill

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA, CPU = torch.device("cuda"), torch.device("cpu")
FAST = ["train.seq_len=32", "train.batch_size=4", "data.generate.num_samples=16", "data.generate.max_new_tokens=24",
        "student.num_layers=1", "eval.max_new_tokens=4", "eval.measure_speed=false"]


def test_auto_choices_on_cuda_are_bf16():
    assert pick_device("auto").type == "cuda"
    assert pick_dtype("auto", CUDA) == torch.bfloat16 and pick_dtype("auto", CPU) == torch.float32
    a = torch.randn(8, 8, device=CUDA)
    with autocast(CUDA):
        assert (a @ a).dtype == torch.bfloat16


def test_teacher_in_bf16_with_sdpa_matches_fp32_cpu(teacher_dir):
    gpu, tok, _ = load_teacher(teacher_dir, CUDA, torch.bfloat16)
    cpu, _, _ = load_teacher(teacher_dir, CPU, torch.float32)
    assert next(gpu.parameters()).dtype == torch.bfloat16 and next(gpu.parameters()).is_cuda
    assert gpu.config._attn_implementation == "sdpa"
    assert not any(p.requires_grad for p in gpu.parameters())
    batch = tok(["Once upon a time there was", "The king said"], return_tensors="pt", padding=True)
    with torch.no_grad():
        lp_gpu = gpu(**batch.to(CUDA)).logits.float().log_softmax(-1).cpu()
        lp_cpu = cpu(**batch.to(CPU)).logits.log_softmax(-1)
    mask = batch["attention_mask"].bool().cpu()
    kl = (lp_cpu.exp() * (lp_cpu - lp_gpu)).sum(-1)[mask]
    assert kl.max() < 2e-3, kl  # bf16 weights: a small, bounded error


def _loss_inputs(seed=0, B=3, T=37, D=64, V=1001):  # odd shapes
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, D, generator=g)
    weight = torch.randn(V, D, generator=g) / 8
    teacher = torch.randn(B, T, V, generator=g) * 2
    targets = torch.randint(0, V, (B, T), generator=g)
    mask = torch.rand(B, T, generator=g) > 0.2
    return hidden, weight, teacher, targets, mask


@pytest.mark.parametrize("signal", ["dense", "sparse_residual"])
def test_fused_loss_on_cuda_matches_the_cpu_reference(signal):
    """fp32 on the GPU equals the CPU's plain autograd; bf16 autocast stays within bf16's error."""
    hidden, weight, teacher, targets, mask = _loss_inputs()
    terms = [{"kind": "forward_kl", "weight": 1.0, "temperature": 2.0, "missing_mass": "residual"},
             {"kind": "ce", "weight": 0.2, "label_smoothing": 0.1}]
    objective = build_objective(terms, chunk_size=40)
    n = int(mask.sum())

    def run(device, bf16):
        sig = DenseSignal(logits=teacher.to(device)) if signal == "dense" else \
            SparseSignal.from_logits(teacher.to(device), 20)
        h, w = hidden.to(device).requires_grad_(), weight.to(device).requires_grad_()
        with autocast(device, bf16):
            hh = h * 1.0  # under autocast a matmul upstream would hand the loss bf16 hidden states
            hh = hh.bfloat16() if bf16 else hh
            out = objective(hh, w, sig, targets.to(device), mask.to(device), n, progress=0.5)
        out.loss.backward()
        return out.loss.detach().cpu(), h.grad.cpu(), w.grad.cpu()

    ref_sig = DenseSignal(logits=teacher) if signal == "dense" else SparseSignal.from_logits(teacher, 20)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    ref = objective.from_logits(h @ w.T, ref_sig, targets, mask, n, progress=0.5)
    ref.loss.backward()
    loss32, gh32, gw32 = run(CUDA, bf16=False)
    torch.testing.assert_close(loss32, ref.loss.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gh32, h.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gw32, w.grad, rtol=1e-4, atol=1e-6)
    loss16, gh16, gw16 = run(CUDA, bf16=True)
    assert abs(loss16 - ref.loss.item()) / ref.loss.item() < 2e-2
    for got, want in ((gh16, h.grad), (gw16, w.grad)):
        assert (got - want).norm() / want.norm() < 5e-2


def test_cache_written_on_cuda_agrees_with_cpu(teacher_dir, tmp_path):
    common = [f"teacher.model={teacher_dir}", *FAST, "cache.k=12", "cache.shard_tokens=150"]
    write_cache(load_config(None, [*common, f"cache.out={tmp_path / 'gpu'}", "train.device=cuda"]))
    write_cache(load_config(None, [*common, f"cache.out={tmp_path / 'cpu'}", "train.device=cpu",
                                   "teacher.dtype=float32"]))
    gpu, cpu = open_cache(tmp_path / "gpu"), open_cache(tmp_path / "cpu")
    assert [e["ids"] for e in gpu.examples] == [e["ids"] for e in cpu.examples]
    p_gpu = np.exp(np.concatenate([e["signal_logprobs"] for e in gpu.examples]).astype(np.float64))
    p_cpu = np.exp(np.concatenate([e["signal_logprobs"] for e in cpu.examples]).astype(np.float64))
    ids_gpu = np.concatenate([e["signal_ids"] for e in gpu.examples])
    ids_cpu = np.concatenate([e["signal_ids"] for e in cpu.examples])
    # bf16 may swap near-ties at the edge of the top-k: compare the captured mass and most ids
    assert np.abs(p_gpu.sum(1) - p_cpu.sum(1)).mean() < 0.02
    assert (ids_gpu == ids_cpu).mean() > 0.8


def test_distill_on_cuda_end_to_end_and_resume(teacher_dir, tmp_path):
    out = tmp_path / "run"
    args = [f"teacher.model={teacher_dir}", f"output_dir={out}", *FAST, "train.device=cuda", "train.max_steps=12",
            "train.checkpoint_every=6", "train.eval_every=6", "train.lr=3e-3"]
    result = distill(load_config(None, args))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["loss"] is not None]  # step 0 holds only the held-out eval
    assert len(losses) == 12 and np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses  # learning on the GPU
    assert all(np.isfinite(r["eval_kl"]) for r in rows if "eval_kl" in r)
    saved = json.loads((out / "eval.json").read_text())
    assert np.isfinite(saved["heldout"]["kl"]) and result["compression"] > 1
    # resume from a copy of the step-6 checkpoint (CUDA RNG state restored): the same final weights
    again = tmp_path / "again"
    (again / "checkpoints").mkdir(parents=True)
    shutil.copytree(out / "checkpoints" / "step-000006", again / "checkpoints" / "step-000006")
    distill(load_config(None, [*args[:1], f"output_dir={again}", *args[2:]]), resume=True)
    a = load_file(str(out / "student" / "model.safetensors"))
    b = load_file(str(again / "student" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)
