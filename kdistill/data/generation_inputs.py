"""The files that teacher-generated data reads, checked before any model loads (called by preflight).

A prompts file, a seed-task file or a problems file that is missing, empty or malformed, a problem
without a known answer, or a contamination task file that does not parse fails here with the file and
line, before the teacher is loaded.
"""
from __future__ import annotations

from kdistill.base.sandbox import require_sandbox
from kdistill.data.cot import read_problems
from kdistill.data.prompts_file import read_prompts
from kdistill.data.self_instruct import read_seeds


def check_generate_files(cfg) -> None:
    g = cfg.data.generate
    if g.prompts:
        read_prompts(g.prompts)
    if g.self_instruct.seed_tasks:
        read_seeds(g.self_instruct.seed_tasks)
    if g.cot.problems:
        read_problems(g.cot.problems, g.cot.mode, g.cot.max_problems)
        if g.cot.mode in ("program", "code"):  # model-written programs run only in bwrap: say so before loading
            require_sandbox()
    if g.filter.enabled and g.filter.contamination_files:
        from kdistill.data.task_files import read_task

        for path in g.filter.contamination_files:
            read_task(path)
