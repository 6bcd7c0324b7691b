"""The closed form's chunk loss as one compiled C kernel on CPU (native_kernel.c), where a C compiler is.

    kernel = native.load()          # None without a compiler, or with KDISTILL_NATIVE=0
    native.chunk(kernel, s, t, targets, inv_tk, inv_tc, kl_coef, ce_coef, eps)  -> (kl rows, ce rows)

Built once per machine with `cc -O3 -march=native` (about a second, no torch headers) into
$KDISTILL_CACHE/native/<hash of source, flags, CPU>.so, written to a temporary name and renamed, so a
build cut short never leaves a half-written library. Rows are split between `torch.get_num_threads()`
Python threads; ctypes releases the GIL during each call. Where the build fails, `load()` returns None
(once, with the compiler's message at debug level) and closed_form.py keeps its torch passes.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

from kdistill.base.fsutil import cache_root

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("native_kernel.c")
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros",
         "-fassociative-math", "-ffp-contract=fast", "-shared", "-fPIC"]
_state: dict = {}


def _cpu() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(l for l in lines if l.startswith(("model name", "flags")))[:8192]
    except OSError:
        return platform.processor()


def build(out_dir: Path | None = None) -> Path:
    """Compile native_kernel.c (once per source, flags and CPU); returns the library's path. Where the
    compiler refuses -march=native (some clang builds), it compiles for the generic target instead.
    Raises RuntimeError with the compiler's output where there is no compiler or it fails."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc or gcc) on PATH")
    source = SOURCE.read_bytes()
    folder = out_dir or cache_root() / "native"
    errors = []
    for flags in (FLAGS, [f for f in FLAGS if f != "-march=native"]):
        key = hashlib.sha256(source + " ".join([compiler, *flags, _cpu()]).encode()).hexdigest()[:16]
        target = folder / f"closed_form-{key}.so"
        if target.exists():
            return target
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".closed_form-", suffix=".so", dir=folder)
        os.close(fd)
        try:
            proc = subprocess.run([compiler, *flags, "-o", tmp, str(SOURCE), "-lm"], capture_output=True,
                                  text=True, timeout=120)
            if proc.returncode == 0:
                os.replace(tmp, target)
                return target
            errors.append(proc.stderr[-2000:])
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise RuntimeError(f"{compiler} failed on {SOURCE.name}:\n" + "\n".join(errors))


def load():
    """The compiled kernel (a ctypes function), or None where it cannot be built or KDISTILL_NATIVE=0."""
    if os.environ.get("KDISTILL_NATIVE", "1") == "0":
        return None
    if "kernel" not in _state:
        try:
            lib = ctypes.CDLL(str(build()))
            fn = lib.kd_closed_form
            p, i64, f32, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_double
            fn.argtypes = [p, i64, p, i64, p, i64, i64, f32, f32, f64, f64, f64, p, p]
            fn.restype = ctypes.c_int
            _state["kernel"] = fn
        except (RuntimeError, OSError, subprocess.SubprocessError) as err:
            log.debug("the native closed-form kernel is not available, the torch passes run instead: %s", err)
            _state["kernel"] = None
    return _state["kernel"]


def _pool(workers: int) -> ThreadPoolExecutor:
    pool = _state.get("pool")
    if pool is None or pool._max_workers != workers:
        if pool is not None:
            pool.shutdown(wait=False)
        pool = _state["pool"] = ThreadPoolExecutor(workers, thread_name_prefix="kdistill-native")
    return pool


def chunk(kernel, s: Tensor, t: Tensor | None, targets: Tensor | None, inv_tk: float, inv_tc: float,
          kl_coef: float, ce_coef: float, eps: float) -> tuple[Tensor | None, Tensor | None]:
    """Run the kernel over every row: writes d loss / d s over `s`; returns each row's KL and CE value
    (fp64, None for an absent term). kl_coef / ce_coef: the terms' gradient coefficients, times 1/count.

    Shapes: s (R, V) fp32 with unit stride in V; t like s or None; targets (R,) int64 or None -> (R,), (R,)"""
    rows, vocab = s.shape
    if targets is not None and rows and not (0 <= int(targets.min()) and int(targets.max()) < vocab):
        raise IndexError(f"a target id is outside the vocabulary [0, {vocab}): ids {int(targets.min())}.."
                         f"{int(targets.max())}")  # the kernel would index out of its row
    kl = torch.empty(rows, dtype=torch.float64) if t is not None else None
    ce = torch.empty(rows, dtype=torch.float64) if targets is not None else None
    workers = max(1, min(torch.get_num_threads(), rows))
    bounds = [rows * k // workers for k in range(workers + 1)]

    def part(k: int) -> int:
        lo, n = bounds[k], bounds[k + 1] - bounds[k]
        if n == 0:
            return 0
        return kernel(s.data_ptr() + lo * s.stride(0) * 4, s.stride(0),
                      t.data_ptr() + lo * t.stride(0) * 4 if t is not None else None,
                      t.stride(0) if t is not None else 0,
                      targets.data_ptr() + lo * 8 if targets is not None else None, n, vocab,
                      inv_tk, inv_tc, kl_coef, ce_coef, eps,
                      kl.data_ptr() + lo * 8 if kl is not None else None,
                      ce.data_ptr() + lo * 8 if ce is not None else None)

    codes = list(_pool(workers).map(part, range(workers))) if workers > 1 else [part(0)]
    if any(codes):
        raise MemoryError("the native closed-form kernel could not allocate its row scratch")
    return kl, ce
