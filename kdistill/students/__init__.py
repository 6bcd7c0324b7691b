"""Students: the LLaMA-style student (`llama.py`, sized by `presets.py`, initialised by `init.py`)."""
from __future__ import annotations

import logging

from tqdm.auto import tqdm

from .init import init_from_teacher, select_layers
from .llama import build_llama, count_parameters, resolve_sizes

log = logging.getLogger("kdistill")


def build_student(cfg, teacher, vocab_size: int, calib_batch=None):
    """Build the configured student and initialise it. Returns (model, report dict)."""
    kind = cfg.student.kind
    if kind == "llama":
        return _llama_student(cfg, teacher, vocab_size, calib_batch)
    raise NotImplementedError(kind)


def _llama_student(cfg, teacher, vocab_size: int, calib_batch):
    sizes = resolve_sizes(cfg.student, teacher.config)
    student = build_llama(sizes, teacher.config, vocab_size)
    report = {"kind": "llama", "sizes": sizes}
    if cfg.student.init == "teacher":
        layers = None
        same = sizes["hidden_size"] == teacher.config.hidden_size
        if same:
            strategy = cfg.student.layer_selection
            n_rounds = len(teacher.model.layers) - sizes["num_layers"] if strategy == "importance" else 0
            with tqdm(total=n_rounds, desc="choosing teacher layers", unit="round", disable=not n_rounds,
                      dynamic_ncols=True) as bar:
                layers = select_layers(strategy, teacher, sizes["num_layers"], cfg.student.layers,
                                       calib_batch, bar)
            report["layer_selection"] = strategy
        report.update(init_from_teacher(student, teacher, layers))
    report["parameters"] = count_parameters(student)
    return student, report
