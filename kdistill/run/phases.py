"""The seconds each stage of a run took: logged as each ends, kept in eval.json's `phases`.

    clock = Phases()
    with clock("teacher"):
        source = open_teacher(cfg, device, dtype)
    result["phases"] = clock.seconds        # {"teacher": 4.1, "data": 61.0, ...}, in the order they ran

The student's own start-up (layer choice, span fit, repair) is timed inside `student`, and the span fit
and repair say their own seconds in `student_init`.
"""
from __future__ import annotations

import contextlib
import logging
import time

log = logging.getLogger("kdistill")


class Phases:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 1)
            log.info("phase %s: %.1f s", name, self.seconds[name])
