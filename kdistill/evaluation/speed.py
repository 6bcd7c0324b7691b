"""Measured efficiency of one model: generation tokens/s, time to first token, peak memory.

Each model is measured in its own subprocess (`python -m kdistill.evaluation.speed DIR`), so its peak
resident memory (max RSS) is its own and not the evaluating process's. Greedy decoding of exactly
`max_new_tokens` tokens from each prompt, batch 1, fp32, after one warm-up generation:

- tokens_per_s: generated tokens / seconds spent in generate, over all prompts
- ttft_ms: mean time of a one-token generate (prompt forward + first token)
- peak_rss_mb: the process's peak resident memory; model_rss_mb: its growth after the imports
  (model load + generation); peak_gpu_mb: torch's peak allocated CUDA memory (on a GPU only)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def folder_bytes(path: str | Path) -> int:
    """Bytes of the weight files in a model folder (safetensors, gguf, bin)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.iterdir() if p.suffix in (".safetensors", ".gguf", ".bin"))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def peak_rss_kb() -> int:
    """This process's peak resident memory in KiB.

    VmHWM from /proc belongs to the process image, so a fresh subprocess starts from zero; ru_maxrss
    (the fallback off Linux) is inherited across exec on Linux and would report the parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure(model_dir: str, prompts: list[str], max_new_tokens: int, threads: int, device: str = "cpu") -> dict:

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import kdistill  # noqa: F401  (registers kdistill's own model classes)

    torch.set_num_threads(threads)
    rss0 = peak_rss_kb()
    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                 trust_remote_code=False).to(device).eval()
    gen = dict(do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id)
    with torch.no_grad():
        model.generate(**tok(prompts[0], return_tensors="pt").to(device), max_new_tokens=4, **gen)
        ttft, tokens, seconds = [], 0, 0.0
        for p in prompts:
            enc = tok(p, return_tensors="pt").to(device)
            t0 = time.perf_counter()
            model.generate(**enc, max_new_tokens=1, min_new_tokens=1, **gen)
            _sync(device)
            ttft.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            out = model.generate(**enc, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, **gen)
            _sync(device)
            seconds += time.perf_counter() - t0
            tokens += out.shape[1] - enc["input_ids"].shape[1]
    peak = peak_rss_kb()
    result = {"tokens_per_s": tokens / seconds, "ttft_ms": 1000 * sum(ttft) / len(ttft), "generated_tokens": tokens,
              "peak_rss_mb": peak / 1024, "model_rss_mb": (peak - rss0) / 1024, "baseline_rss_mb": rss0 / 1024,
              "threads": threads, "device": device}
    if device.startswith("cuda"):
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def measure_in_subprocess(model_dir: str, prompts: list[str], max_new_tokens: int = 32,
                          threads: int = 1, device: str = "cpu") -> dict:
    """`measure` in a fresh Python process; {"error": last stderr line} if that process fails."""
    cmd = [sys.executable, "-m", "kdistill.evaluation.speed", str(model_dir), "--max-new-tokens",
           str(max_new_tokens), "--threads", str(threads), "--device", device, "--prompts-json", json.dumps(prompts)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    p.add_argument("--prompts-json", default='["Once upon a time"]')
    args = p.parse_args(argv)
    prompts = json.loads(args.prompts_json)
    print(json.dumps(measure(args.model_dir, prompts, args.max_new_tokens, args.threads, args.device)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
