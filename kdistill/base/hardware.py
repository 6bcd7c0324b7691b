"""Device, dtype, precision and thread choices, made once from what the hardware can do.

`auto` picks CUDA, else Apple's MPS, else the CPU. This CPU has no fast bf16 (bf16 matmuls are ~100x
slower than fp32, fp16 ~14x), so on CPU everything runs in fp32; on CUDA the teacher runs in bf16 and
training uses bf16 autocast, or fp16 autocast with a loss scaler on a GPU without bf16 (train/precision.py).
On MPS both stay fp32 unless asked: bf16 needs macOS 14 and fp16 overflows where fp32 does not.
"""
from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path

import torch

from kdistill.base.errors import ConfigError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # train.precision; fp16 trains with a loss scaler
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}  # the autocast dtype of each mixed precision
PROC_STAT = "/proc/stat"  # Linux: jiffies each CPU spent busy and idle since boot


def mps_available() -> bool:
    """Apple's Metal backend (Apple silicon, macOS 12.3+, a torch built with it)."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def pick_device(requested: str = "auto", key: str = "train.device") -> torch.device:
    """`auto` is CUDA when available, else MPS when available, else CPU. ConfigError (naming `key`) for a
    device this machine lacks."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{key}={requested!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ConfigError(f"{key}={requested}: CUDA is not available on this machine (torch "
                              f"{torch.__version__}, {built}); set {key}=auto or {key}=cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{key}={requested}: this machine has {torch.cuda.device_count()} CUDA "
                              f"device(s); use cuda:0..cuda:{torch.cuda.device_count() - 1} or auto")
    if device.type == "mps" and not mps_available():
        mps = getattr(torch.backends, "mps", None)
        why = ("it needs Apple silicon and macOS 12.3 or later" if mps is not None and mps.is_built()
               else f"torch {torch.__version__} is built without it")
        raise ConfigError(f"{key}={requested}: Apple's MPS backend is not available on this machine ({why}); "
                          f"set {key}=auto or {key}=cpu")
    return device


def pick_dtype(requested: str, device: torch.device, key: str = "teacher.dtype") -> torch.dtype:
    """`auto` is bf16 on CUDA with bf16 support, else fp32 (CPU bf16 is slow here; on MPS fp32 too, the
    conservative choice: bf16 needs macOS 14). ConfigError naming `key` and the valid names for anything else."""
    if requested != "auto":
        if requested not in DTYPES:
            raise ConfigError(f"{key}={requested!r} is not a dtype; choose one of auto, {', '.join(DTYPES)}")
        return DTYPES[requested]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def pick_precision(requested: str, device: torch.device, key: str = "train.precision") -> str:
    """What `requested` (one of PRECISIONS) means on `device`: fp32, bf16 or fp16. `auto` is bf16 on CUDA
    with bf16, fp16 on CUDA without it, fp32 elsewhere (CPU half precision is slow here; MPS kept fp32
    as the conservative choice). ConfigError naming `key` and the fix for a precision `device` cannot run."""
    if requested not in PRECISIONS:
        raise ConfigError(f"{key}={requested!r} is not a precision; choose one of {', '.join(PRECISIONS)}")
    if requested == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if requested == "fp32":
        return requested
    if not torch.amp.is_autocast_available(device.type):
        raise ConfigError(f"{key}={requested}: torch {torch.__version__} has no autocast on {device.type}; "
                          f"set {key}=fp32 (or auto)")
    if requested == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{key}=bf16: this GPU ({torch.cuda.get_device_name(device)}) has no bf16; set "
                          f"{key}=fp16 (mixed precision with a loss scaler) or {key}=auto, which picks it")
    if requested == "bf16" and device.type == "mps" and not _holds(device, torch.bfloat16):
        raise ConfigError(f"{key}=bf16: this Mac's MPS backend has no bf16 (it needs macOS 14 or later); set "
                          f"{key}=fp16 or {key}=fp32")
    return requested


def _holds(device: torch.device, dtype: torch.dtype) -> bool:
    try:
        torch.zeros(1, dtype=dtype, device=device)
    except (RuntimeError, TypeError):
        return False
    return True


def autocast(device: torch.device, enabled: bool = True, precision: str = "auto"):
    """Autocast to `precision`'s half dtype on `device` (see pick_precision: by default bf16 on CUDA with
    bf16, fp16 on CUDA without it); a no-op for fp32, e.g. on CPU, where half precision is slower."""
    name = pick_precision(precision, device) if enabled else "fp32"
    if name == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=HALF[name])


def _cpu_jiffies(stat: Path) -> tuple[int, int, int] | None:
    """(idle, total) jiffies summed over all CPUs and the number of CPUs, from a /proc/stat file; None
    where there is none (macOS, Windows) or it reads otherwise."""
    try:
        lines = stat.read_text().splitlines()
        head = next(line.split() for line in lines if line.startswith("cpu "))
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in head[1:9])
    except (OSError, StopIteration, ValueError):
        return None
    cpus = sum(1 for line in lines if re.match(r"cpu\d+ ", line))
    return idle + iowait, user + nice + system + idle + iowait + irq + softirq + steal, cpus  # guest is in user


def busy_cores(stat: str | Path = PROC_STAT, interval: float = 0.25, sleep=time.sleep) -> float | None:
    """Cores busy now: the share of busy jiffies of all CPUs over the next `interval` seconds, times the
    number of CPUs; None without a /proc/stat to sample (or when it did not move)."""
    before = _cpu_jiffies(Path(stat))
    if before is None:
        return None
    sleep(interval)
    after = _cpu_jiffies(Path(stat))
    if after is None or after[1] <= before[1] or not after[2]:
        return None
    idle, total = after[0] - before[0], after[1] - before[1]
    return (1 - idle / total) * after[2]


def idle_cores(stat: str | Path = PROC_STAT, interval: float = 0.25, sleep=time.sleep) -> int:
    """Cores not busy now, at least 1: all cores less those a short sample of /proc/stat finds busy, or,
    where there is no /proc/stat, less the 1-minute load average (which still remembers a pip install
    that ended a minute ago: 0.9 of 2 idle cores read as busy).

    Torch's threads spin-wait on each other, so one more thread than there are free cores makes a
    forward pass several times slower (4x measured with 2 threads and one other busy process on 2 cores).
    """
    cores = os.cpu_count() or 1
    busy = busy_cores(stat, interval, sleep)
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except OSError:
            busy = 0.0
    return max(1, min(cores, round(cores - busy)))


def set_threads(threads: int | str = 0) -> int:
    """Use `threads` torch threads ("auto" or 0 = $KDISTILL_THREADS, else the idle cores); returns the number set."""
    if threads == "auto" or threads <= 0:
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
