"""``static:FRRF…``: an explicit schedule, one letter a step — F full, R reuse the residual of the
whole block stack. For experiments and for reproducing a schedule found elsewhere."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PolicyError
from ..planner.plan import Plan
from . import register
from .base import Controller, Method, Params, param


@dataclass(frozen=True)
class StaticParams(Params):
    schedule: str = param("F", "letters F/R, one per step; the first must be F")


class StaticController(Controller):
    def __init__(self, policy, num_steps):
        super().__init__(policy, num_steps)
        sched = policy.params.schedule
        if num_steps is not None and len(sched) != num_steps:
            raise PolicyError(f"static schedule has {len(sched)} letters but the trajectory has {num_steps} steps")

    def rule(self, step, signal):
        sched = self.policy.params.schedule
        if step >= len(sched):
            raise PolicyError(f"static schedule has {len(sched)} letters; step {step} is past its end")
        return sched[step] == "F"


@register
class StaticMethod(Method):
    name = "static"
    doc = "explicit step schedule, one letter a step: F = full, R = reuse the whole block stack's residual"
    main = "schedule"
    Params = StaticParams
    controller_cls = StaticController
    rank = 1
    length_bound = True  # one letter a step

    def validate(self):
        s = self.params.schedule
        if not s or set(s) - {"F", "R"} or s[0] != "F":
            raise PolicyError(f"static:{s!r}: the schedule is letters F (full) and R (reuse), starting with F")

    def plan(self, planner) -> Plan:
        return planner.range_reuse(0, len(planner.blocks) - 1, "stack")
