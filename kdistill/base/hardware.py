"""Device, dtype and thread choices, made once from what the hardware can do.

This CPU has no fast bf16 (bf16 matmuls are ~100x slower than fp32), so on CPU everything runs in fp32;
on CUDA the teacher runs in bf16 and training uses bf16 autocast.
"""
from __future__ import annotations

import contextlib
import os

import torch

from kdistill.base.errors import ConfigError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def pick_device(requested: str = "auto", key: str = "train.device") -> torch.device:
    """`auto` is CUDA when available, else CPU. ConfigError (naming `key`) for a device this machine lacks."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{key}={requested!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ConfigError(f"{key}={requested}: CUDA is not available on this machine (torch "
                              f"{torch.__version__}, {built}); set {key}=auto or {key}=cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{key}={requested}: this machine has {torch.cuda.device_count()} CUDA "
                              f"device(s); use cuda:0..cuda:{torch.cuda.device_count() - 1} or auto")
    return device


def pick_dtype(requested: str, device: torch.device, key: str = "teacher.dtype") -> torch.dtype:
    """`auto` is bf16 on CUDA with bf16 support, else fp32 (CPU bf16 is slow here). ConfigError naming
    `key` and the valid names for anything else."""
    if requested != "auto":
        if requested not in DTYPES:
            raise ConfigError(f"{key}={requested!r} is not a dtype; choose one of auto, {', '.join(DTYPES)}")
        return DTYPES[requested]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; a no-op on CPU, where bf16 is slower than fp32."""
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def idle_cores() -> int:
    """Cores not already busy: all cores less the 1-minute load average, at least 1.

    Torch's threads spin-wait on each other, so one more thread than there are free cores makes a
    forward pass several times slower (4x measured with 2 threads and one other busy process on 2 cores).
    """
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, round(cores - busy)))


def set_threads(threads: int = 0) -> int:
    """Use `threads` torch threads (0 = $KDISTILL_THREADS, else the idle cores); returns the number set."""
    if threads <= 0:
        threads = int(os.environ.get("KDISTILL_THREADS", "0")) or idle_cores()
    torch.set_num_threads(threads)
    return threads


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def release_memory(model=None) -> None:
    """Give what training held (gradients, optimizer state, freed activations) back to the system before
    the next phase: drop `model`'s .grad tensors, collect, empty the CUDA cache and, with glibc, trim the
    heap (freed blocks otherwise stay in the process's RSS while evaluation subprocesses start)."""
    import gc

    if model is not None:
        for p in model.parameters():
            p.grad = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass
