"""`kdistill distill`: distill a teacher into a student (a config file plus key.path=value overrides).

    kdistill distill --config configs/demo.yaml train.max_steps=20 --dry-run
"""
from __future__ import annotations

from kdistill import api


def main(args) -> int:
    cfg = api.load_config(args.config, args.overrides)
    if args.dry_run:
        lines = api.plan(cfg, resume=args.resume, overwrite=args.overwrite)
        print("dry run: the config is valid; nothing was loaded or written", *(f"  {x}" for x in lines),
              "run it: the same command without --dry-run", sep="\n", flush=True)
        return 0
    api.distill(cfg, resume=args.resume, overwrite=args.overwrite, accept_changed_data=args.accept_changed_data)
    return 0
