"""``budget:nfe=K`` — exactly K full steps: evenly spaced, or, with ``calib=FILE`` from
``cachec calibrate``, the schedule of least predicted final error (:mod:`cachec.schedules`).
``base=`` picks what cached steps do: FORA reuse, the stack residual, or a TaylorSeer order-1
forecast. The cost of a trajectory is fixed in advance."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PolicyError
from ..forecast import ForecastTracker, Taylor
from ..planner.plan import Plan
from ..schedules import budget_schedule, even_schedule, read_calibration
from . import register
from .base import Controller, Method, Params, param


@dataclass(frozen=True)
class BudgetParams(Params):
    nfe: int = param(10, "number of full steps K (forced warmup/final steps included)", 1, 100000)
    base: str = param("module", "what cached steps do: module (FORA reuse), step (stack residual), forecast (TaylorSeer order 1)")
    calib: str = param("", "calibration file from `cachec calibrate` (empty: evenly spaced full steps)",
                        file=True)


class BudgetController(Controller):
    def __init__(self, policy, num_steps):
        super().__init__(policy, num_steps)
        self.schedule = policy.schedule_for(num_steps)
        self.tracker = ForecastTracker(policy.forecast_method()) if policy.params.base == "forecast" else None

    def forced(self, step):
        """Nothing beyond the schedule: it was built with the forced steps in it."""
        if step >= len(self.schedule):
            raise PolicyError(f"{self.policy.spec}: its schedule has {len(self.schedule)} steps; step {step} is past its end")
        return False

    def rule(self, step, signal):
        return self.schedule[step] == "F"

    def step_inputs(self, step, full):
        return self.tracker.step_inputs(step, full) if self.tracker is not None else {}


@register
class BudgetMethod(Method):
    name = "budget"
    doc = "exactly nfe=K full steps: evenly spaced, or the calibrated schedule of least predicted error (calib=FILE)"
    granularity = "module, step (base=)"
    main = "nfe"
    Params = BudgetParams
    controller_cls = BudgetController
    rank = 12

    @property
    def needs_data(self) -> bool:
        """Only a calibrated budget reads data: derived from the parameters, so no construction
        path (the parser, a served request's rebuilt method, ``with_data``) can leave it stale."""
        return bool(self.params.calib)

    @property
    def length_bound(self) -> bool:
        return bool(self.params.calib)  # a calibrated schedule is the calibration trajectory's length

    def validate(self):
        if self.params.base not in ("module", "step", "forecast"):
            raise PolicyError(f"budget: base={self.params.base!r}; accepted: module, step, forecast")

    def plan_granularity(self) -> str:
        return {"module": "module", "step": "step", "forecast": "module"}[self.params.base]

    def plan_key(self, num_blocks: int) -> tuple:
        return (self.name, self.params.base)

    def forecast_method(self):
        return Taylor(1) if self.params.base == "forecast" else None

    def data_source(self) -> str:
        return self.params.calib

    def load_data(self) -> dict:
        calib = read_calibration(self.params.calib)
        p = self.params
        schedule, predicted = budget_schedule(calib, p.nfe, p.base, warmup=p.warmup, final=p.final)
        return {"schedule": schedule, "predicted_error": predicted, "steps": calib["steps"]}

    def schedule_for(self, num_steps: int | None) -> str:
        if self.params.calib:
            schedule = self.resolved().data["schedule"]
            if num_steps is not None and num_steps != len(schedule):
                raise PolicyError(f"{self.spec}: the calibrated schedule has {len(schedule)} steps but the trajectory "
                                  f"has {num_steps}; calibrate for {num_steps} steps (cachec calibrate --steps {num_steps})")
            return schedule
        if num_steps is None:
            raise PolicyError(f"{self.spec} spaces its full steps over the trajectory, so it needs the number of "
                              "steps (num_steps=..., or a pipeline that passes num_inference_steps)")
        p = self.params
        return even_schedule(num_steps, p.nfe, warmup=p.warmup, final=p.final)

    def plan(self, planner) -> Plan:
        base = self.params.base
        if base == "forecast":
            return planner.forecast(self.forecast_method(), "module")
        elif base == "module":
            return planner.module_reuse()
        else:
            return planner.range_reuse(0, len(planner.blocks) - 1, "stack")
