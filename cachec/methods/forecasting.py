"""What the forecasting methods share (TaylorSeer, HiCache, FoCa; docs/predictive_policies.md):
the fixed interval of FORA whose cached steps are forecasts, the ``streams=`` choice, and the
forecast plan. A method module only says which :class:`~cachec.forecast.ForecastMethod` it is."""

from __future__ import annotations

from ..errors import PolicyError
from ..forecast import ForecastTracker
from ..planner.plan import Plan
from .base import Interval, Method, param

STREAMS = param("module", "module: forecast every attention/MLP output; step: one residual of the whole block stack")


class ForecastController(Interval):
    """FORA's interval; cached steps are forecasts whose coefficients this supplies."""

    def __init__(self, policy, num_steps):
        super().__init__(policy, num_steps)
        self.tracker = ForecastTracker(policy.forecast_method())

    def step_inputs(self, step, full):
        return self.tracker.step_inputs(step, full)


class ForecastingMethod(Method):
    granularity = "module, step (streams=)"
    main = "N"
    controller_cls = ForecastController

    def validate(self):
        if self.params.streams not in ("module", "step"):
            raise PolicyError(f"{self.name}: streams={self.params.streams!r}; accepted: module, step")

    def plan_granularity(self) -> str:
        return self.params.streams

    def plan_key(self, num_blocks: int) -> tuple:
        m = self.forecast_method()
        return (m.name, m.state, m.predict_writes, self.params.streams)

    def plan(self, planner) -> Plan:
        return planner.forecast(self.forecast_method(), self.params.streams)
