"""The report of one or more runs (`kdistill report`): report.html (self-contained), report.md and its PNGs.

    from kdistill.report.build import build_report
    build_report(["runs/a", "runs/b"], "runs/report", min_retention=0.9)
"""
from __future__ import annotations

import os
from pathlib import Path

from kdistill.base import fsutil
from kdistill.base.errors import ConfigError
from kdistill.report.page import images, render_html, render_markdown
from kdistill.report.runs import load_runs
from kdistill.report.sections import build_blocks


def default_out(run_dirs: list) -> Path:
    """RUN_DIR/report for one run; the runs' common parent folder /report for several."""
    if len(run_dirs) == 1:
        return Path(run_dirs[0]) / "report"
    return Path(os.path.commonpath([str(Path(p).resolve()) for p in run_dirs])) / "report"


def build_report(run_dirs: list, out_dir=None, min_retention: float = 0.9, title: str = "kdistill report") -> dict:
    """Write the report; returns {"html": path, "markdown": path, "images": [paths]}."""
    if not 0 < min_retention <= 1.5:
        raise ConfigError(f"--min-retention {min_retention}: give a share such as 0.9 (90% of the teacher)")
    runs = load_runs(run_dirs)
    out = Path(out_dir) if out_dir else default_out(run_dirs)
    blocks = build_blocks(runs, title, min_retention)
    written = []
    for name, png in images(blocks).items():
        out.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(png)
        written.append(str(out / name))
    fsutil.write_text(out / "report.md", render_markdown(blocks))
    fsutil.write_text(out / "report.html", render_html(title, blocks))
    return {"html": str(out / "report.html"), "markdown": str(out / "report.md"), "images": written}

