"""The report of one or more runs (`kdistill report`): report.html (self-contained), report.md and its PNGs.

    from kdistill.report.build import build_report
    build_report(["runs/a", "runs/b"], "runs/report", min_retention=0.9)
"""
from __future__ import annotations

import os
from pathlib import Path

from kdistill.base import fsutil
from kdistill.base.errors import ConfigError
from kdistill.base.outputs import check_output, mark_own
from kdistill.report.page import images, render_html, render_markdown
from kdistill.report.runs import load_runs
from kdistill.report.sections import build_blocks


def default_out(run_dirs: list) -> Path:
    """RUN_DIR/report for one run; the runs' common parent folder /report for several."""
    if len(run_dirs) == 1:
        return Path(run_dirs[0]) / "report"
    return Path(os.path.commonpath([str(Path(p).resolve()) for p in run_dirs])) / "report"


def build_report(run_dirs: list, out_dir=None, min_retention: float = 0.9, title: str = "kdistill report",
                 force: bool = False) -> dict:
    """Write the report; returns {"html": path, "markdown": path, "images": [paths]}.

    The output folder follows kdistill/base/outputs.py: a report folder written before is refreshed, any
    other existing path is replaced only with `force`, never a run folder or a run's own files; the
    report is written beside it and renamed into place."""
    if not 0 < min_retention <= 1.5:
        raise ConfigError(f"--min-retention {min_retention}: give a share such as 0.9 (90% of the teacher)")
    out = Path(out_dir) if out_dir else default_out(run_dirs)
    check_output(out, force, key="--out" if out_dir else "--out (default)", own="report")
    runs = load_runs(run_dirs)
    blocks = build_blocks(runs, title, min_retention)
    pictures = images(blocks)
    with fsutil.atomic_dir(out) as tmp:
        for name, png in pictures.items():
            (tmp / name).write_bytes(png)
        fsutil.write_text(tmp / "report.md", render_markdown(blocks))
        fsutil.write_text(tmp / "report.html", render_html(title, blocks))
        mark_own(tmp, "report")
    return {"html": str(out / "report.html"), "markdown": str(out / "report.md"),
            "images": [str(out / name) for name in pictures]}

