"""`kdistill report RUN_DIR [RUN_DIR ...]`: report.html (self-contained), report.md and its figures.

    kdistill report runs/small runs/large --min-retention 0.9 --out runs/report
"""
from __future__ import annotations

from kdistill import api


def main(args) -> int:
    paths = api.report(args.runs, args.out, args.min_retention, args.title, args.force)
    print(f"wrote {paths['html']} (self-contained) and {paths['markdown']} with {len(paths['images'])} figures")
    return 0
