"""`kdistill eval`: a student against its teacher, the table on screen and JSON (kdistill/run/evaluate.py).

    kdistill eval --run runs/demo --tasks tests/fixtures/tasks/tiny_mc.jsonl
"""
from __future__ import annotations

from kdistill import api


def main(args) -> int:
    api.evaluate(args.student, args.teacher, args.data, run=args.run, tasks=args.tasks or (), seq_len=args.seq_len,
                 batches=args.batches, limit=args.limit, max_new_tokens=args.max_new_tokens,
                 measure_speed=not args.no_speed, heldout=not args.no_heldout, out=args.out,
                 lm_eval_dir=args.lm_eval_dir, teacher_server=args.teacher_server, server_model=args.server_model,
                 server_api=args.server_api, force=args.force)
    return 0
