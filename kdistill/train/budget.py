"""train.time_budget: minutes from the command's start to the trained student, shared out as they are spent.

    budget = Budget(cfg.train.time_budget)          # at the command's start; Budget(None) sizes nothing
    limits = budget.fit_limits(span, repair)        # when the student is built: {"span_fit": s, "repair": s}
    budget.plan_steps(step, step_s, eval_s, every)  # in the loop, once steps are timed: the step count

The budget covers the teacher, the data, the layer choice, the start-up fits and the training steps; the
final evaluation and speed measurement come after it (eval.json `phases` says how long they took). The span
fit may take SPAN_SHARE of what is left when it starts, the repair REPAIR_SHARE of what is left after it
(the defaults of student.span_fit_share and student.repair_share; each stops after the step that reaches its
share, and never runs more than its configured steps). Training then times its first TIMED_STEPS steps and
trains as many as fit in the rest (held-out evaluations included, at the step-0 evaluation's measured cost),
and sizes the schedule's cosine to that count; while it trains, the count is lowered when the steps since it
was last set run slower than that, and raised when at least RECENT of them ran faster by more than SLACK
than the speed it was set with (a teacher skipped after the first epoch, `teacher.reuse_topk`, makes later
steps cheaper); evaluations count at their measured cost, so one falling between two checks does not move
the count. A resumed run only lowers the count it saved. train.max_steps or train.epochs, when set, cap the
count. Shares: measured in docs/benchmarks.md "Quality per minute" (wall-clock-matched rows).
"""
from __future__ import annotations

import logging
import math
import statistics
import time

from kdistill.config.schema import StudentConfig

log = logging.getLogger("kdistill")
SPAN_SHARE = StudentConfig.span_fit_share  # the config's defaults: of the seconds left when the student is built
REPAIR_SHARE = StudentConfig.repair_share  # of the seconds left after the span fit
TIMED_STEPS = 3  # steps timed before the count is set (the first one also warms up)
SLACK = 1.05  # steps may run this much slower than measured before the count is lowered
RECENT = 8  # steps timed since the count last changed before it may be raised


class Budget:
    """A deadline (None: no budget), and what the run has measured against it."""

    def __init__(self, minutes: float | None, start: float | None = None):
        self.minutes = minutes
        self.start = time.time() if start is None else start
        self.deadline = None if minutes is None else self.start + 60 * minutes

    def __bool__(self) -> bool:
        return self.deadline is not None

    def left(self) -> float:
        """Seconds left (negative once spent)."""
        return self.deadline - time.time()

    def fit_limits(self, span_share: float = SPAN_SHARE, repair_share: float = REPAIR_SHARE) -> dict | None:
        """Seconds the span fit and the repair may take, their shares of what is left now (student.span_fit_share,
        student.repair_share); None without a budget."""
        if not self:
            return None
        left = max(0.0, self.left())
        return {"span_fit": span_share * left, "repair": repair_share * left}

    def plan_steps(self, step: int, step_s: float, eval_s: float, eval_every: int, cap: int | None) -> int:
        """The steps to train in all, `step` of them taken, each `step_s` seconds, plus a held-out evaluation
        of `eval_s` every `eval_every` steps; at least `step` (nothing more fits), at most `cap`."""
        per_step = step_s + (eval_s / eval_every if eval_every > 0 else 0.0)
        more = max(0, math.floor(self.left() / max(per_step, 1e-9)))
        total = step + more
        return min(total, cap) if cap is not None else total


def exceeded(budget: Budget, step: int, total: int, step_s: float, eval_s: float, eval_every: int) -> bool:
    """True when the `total - step` steps left would end more than SLACK past the deadline."""
    per_step = step_s + (eval_s / eval_every if eval_every > 0 else 0.0)
    return bool(budget) and (total - step) * per_step > SLACK * max(0.0, budget.left()) + per_step


class StepClock:
    """The loop's side of the budget: times each step (`tick` at an iteration's start, `stepped` after its
    optimizer step: the evaluation and checkpoint after it are not in it), sets the run's step count once
    TIMED_STEPS are timed, then lowers it if the steps (evaluations counted at their measured cost) run
    slower than that, or raises it when they run faster (not on a resumed run: `sized` says the count came
    from its checkpoint). Without a budget it does nothing."""

    def __init__(self, budget: Budget, cap: int | None, eval_every: int, eval_s: float, sized: bool):
        self.budget, self.cap, self.every, self.eval_s = budget, cap, eval_every, eval_s
        self.sized = sized or not budget
        self.grow = not sized  # a count this command set may grow; a resumed run's count only shrinks
        self._changed_at = 1  # the first step timed since the count last changed (step 0 also warms up)
        self._per = float("inf")  # the seconds a step (evaluations included) the count was last set with
        self.steps: list[float] = []  # seconds of each optimizer step (this command's)
        self._step_started = None

    def tick(self) -> None:
        self._step_started = time.perf_counter()

    def stepped(self) -> None:
        self.steps.append(time.perf_counter() - self._step_started)

    def _with_evaluations(self, step_s: float) -> float:
        """Seconds a step with its share of the held-out evaluations."""
        return step_s + (self.eval_s / self.every if self.every > 0 else 0.0)

    def resize(self, state, dist) -> bool:
        """Set or lower `state.total` (the same on every process: the main one decides); True when it changed."""
        if not self.budget:
            return False
        if not self.sized:
            if len(self.steps) < TIMED_STEPS and (self.cap is None or state.step < self.cap):
                return False
            step_s = statistics.median(self.steps[1:] or self.steps)  # the first one also warms up
            total = self.budget.plan_steps(state.step, step_s, self.eval_s, self.every, self.cap)
            how = (f"{step_s:.2f} s a step" + (f", a held-out evaluation {self.eval_s:.1f} s every {self.every} "
                                               f"steps" if self.eval_s else ""))
            per = self._with_evaluations(step_s)
        else:
            # the steps since the count last changed; evaluations are counted at their measured cost, not by
            # the step they fall in, so they do not move the count
            since = self.steps[self._changed_at:]
            if len(since) < TIMED_STEPS:
                return False
            step_s = statistics.mean(since)
            per = self._with_evaluations(step_s)
            total, how = state.total, ""
            if exceeded(self.budget, state.step, state.total, per, 0.0, 0):
                total = min(state.total, self.budget.plan_steps(state.step, per, 0.0, 0, self.cap))
                how = f"steps run slower than measured: {step_s:.2f} s a step"
            elif self.grow and len(since) >= RECENT and per * SLACK < self._per:  # faster than when last set
                more = self.budget.plan_steps(state.step, per * SLACK, 0.0, 0, self.cap)
                if more > state.total + 1:
                    total, how = more, f"steps run faster than measured: {step_s:.2f} s a step"
        if dist.active:
            total = dist.broadcast(total)
        self.sized = True
        if total == state.total:
            return False
        state.total, self._changed_at, self._per = total, len(self.steps), per
        if dist.main:
            log.info("time budget %g min (%.0f s left): %d steps in all (%s)", self.budget.minutes,
                     max(0.0, self.budget.left()), total, how)
        return True
