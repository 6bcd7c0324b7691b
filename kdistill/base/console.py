"""What a run shows and keeps: kdistill's own lines and bars, other libraries quiet, a log file.

    quiet_libraries()                     # transformers / huggingface_hub / datasets: no progress bars
    with run_log(run.path / "kdistill.log", keep=lambda: run.checkpointed):
        ...                               # kdistill's log records and printed lines also go to the file

kdistill's own progress bars (training, data generation, layer choice) go to stderr and are not logged.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

from kdistill.base.lazy import after_import


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights", "Writing model shards"; hub downloads too
    hf_logging.set_verbosity_error()


def _quiet_hub() -> None:
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()


def _quiet_datasets() -> None:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def quiet_libraries() -> None:
    """Hide other libraries' progress bars and warnings, each when (if) it is imported: nothing loads now."""
    after_import("transformers", _quiet_transformers)
    after_import("huggingface_hub", _quiet_hub)
    after_import("datasets", _quiet_datasets)


class _Tee:
    """A text stream that writes to `stream` and to `copy` (the log file)."""

    def __init__(self, stream, copy):
        self._stream, self._copy = stream, copy

    def write(self, text: str) -> int:
        self._copy.write(text)
        return self._stream.write(text)

    def flush(self) -> None:
        self._copy.flush()
        self._stream.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding, ... of the real stream
        return getattr(self._stream, name)


@contextlib.contextmanager
def run_log(path: Path, append: bool = False, keep=lambda: True):
    """Copy kdistill's log records (INFO and up, or DEBUG with -v) and stdout into `path` while the block
    runs; other libraries' Python warnings (transformers, bitsandbytes, ...) go to the file only. If the block fails and `keep()` is false, the file is removed (a failed fresh run leaves its
    folder as it was)."""
    logger = logging.getLogger("kdistill")
    level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    file = path.open("a" if append else "w", encoding="utf-8")
    handler = logging.StreamHandler(file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger.addHandler(handler)
    stdout = sys.stdout
    sys.stdout = _Tee(stdout, file)
    warned = logging.getLogger("py.warnings")  # other libraries' warnings: in the file, never on the console
    propagate = warned.propagate
    logging.captureWarnings(True)
    warned.propagate = False
    warned.addHandler(handler)
    failed = False
    try:
        yield path
    except BaseException:
        failed = True
        raise
    finally:
        sys.stdout = stdout
        warned.removeHandler(handler)
        warned.propagate = propagate
        logging.captureWarnings(False)
        logger.removeHandler(handler)
        logger.setLevel(level)
        file.close()
        if failed and not keep():
            path.unlink(missing_ok=True)


def _layers(value) -> str:
    if isinstance(value, list):
        return "layers " + (", ".join(map(str, value)) if value else "none")
    return f"layers {value}"


def describe_student(report: dict, teacher_parameters: int | None) -> str:
    """One line for the student a run built, from the report of kdistill.students.build_student."""
    n = report["parameters"]
    size = f"{n:,} parameters"
    if teacher_parameters:
        size += f" (teacher {teacher_parameters:,}, {teacher_parameters / n:.2f}x smaller)"
    kind = report["kind"]
    if kind == "llama":
        s = report["sizes"]
        layers = f"{s['num_layers']} layer" + ("" if s["num_layers"] == 1 else "s")
        shape = (f"{layers} x {s['hidden_size']} wide ({s['num_heads']} heads, {s['num_kv_heads']} kv heads, "
                 f"FFN {s['intermediate_size']})")
        init = [f"embeddings {report.get('embeddings', 'random')}", _layers(report.get("layers", "random"))]
        if report.get("layer_selection"):
            init[-1] += f" (chosen by {report['layer_selection']})"
        if report.get("final_norm"):
            init.append(f"final norm {report['final_norm']}")
        if report.get("attention_window"):
            init.append(f"attention window {report['attention_window']}")
        return f"student: LLaMA, {shape}, {size}; initialised: {', '.join(init)}"
    if kind == "fractal":
        shape = (f"one block of width {report['hidden_size']} ({report['num_heads']} heads, FFN "
                 f"{report['intermediate_size']}) applied {report['steps']} times (alpha {report['alpha']})")
        return (f"student: fractal, {shape}, {size}, {report['core_parameters']:,} in the block; "
                f"embeddings {report['embeddings']}")
    lora = report.get("lora")
    how = (f"LoRA rank {lora['rank']} on {', '.join(lora['targets'])}" if lora else "all weights")
    trainable = report.get("trainable_parameters", n)
    return (f"student: pretrained {report.get('model')}, {size}, {trainable:,} trainable ({how}); "
            f"tokenizer {report.get('tokenizer')}")


def _megabytes(folder: Path) -> str:
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return f"{total / 1e6:.1f} MB"


def outputs_line(run_dir: Path, prompt: str = "Once upon a time") -> str:
    """What a finished run wrote, and the commands that come next."""
    student = run_dir / "student"
    card = ", model card README.md" if (student / "README.md").is_file() else ""
    wrote = [f"{student} ({_megabytes(student)}{card})"]
    wrote += [name for name in ("adapter", "eval.json", "metrics.jsonl", "config.yaml", "kdistill.log")
              if (run_dir / name).exists()]
    return (f"wrote {', '.join(wrote)}\n"
            f"next: kdistill report {run_dir}  |  kdistill generate --model {student} \"{prompt}\"  |  "
            f"kdistill export --model {student} --format gguf --type Q8_0")
