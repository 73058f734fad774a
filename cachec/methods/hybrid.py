"""``DECISION+FORECASTER`` — a step decision whose reused steps are forecasts.

cache-dit's most used configuration is DBCache with its TaylorSeer calibrator: the probe decides
which steps run the cached blocks, and a cached step applies a *forecast* of their residual
instead of the last computed one. A hybrid spells that as two specs joined by ``+``::

    dbcache:F=1,B=0,t=0.08+taylorseer:O=1
    static:FFRRFRRRF+hicache:O=1,sigma=0.8

The decision (:data:`DECISIONS`) keeps every parameter and its whole controller (probe, warm-up,
limits, mask); the forecaster (:func:`forecasters`) contributes only its forecast — ``O`` (and
``sigma``): its interval ``N``, ``streams``, ``warmup`` and ``final`` belong to the decision and are
refused there. The decisions are those whose reuse is a *residual*: of a block range (the planner's
:meth:`~cachec.planner.Planner.range_delta`), or EasyCache's ``Δ = v − x`` of the whole call. The
hybrid's plan is the decision's plan on a view of the planner that forecasts those residuals
(:meth:`~cachec.planner.Planner.forecasting`; one forecast stream per residual stream), so full
steps fold the fresh residual into the forecast state and cached steps apply its forecast.

Full steps come where the decision puts them, at irregular distances: the forecast coefficients
(:class:`~cachec.forecast.ForecastTracker`) use the real distances — the finite differences are
divided by the gap between the two full steps, the forecast is evaluated at the distance from the
last one.
"""

from __future__ import annotations

from ..errors import ModelError, PolicyError
from ..forecast import ForecastTracker
from ..planner.plan import Plan
from .base import Actions, Controller, Method, StepContext

DECISIONS = ("static", "fbcache", "dbcache", "teacache", "magcache", "easycache")
DECISION_KEYS = ("N", "streams", "warmup", "final", "placement")  # a forecaster's keys the decision owns in a hybrid


def forecasters() -> list[str]:
    """The forecasting methods (:class:`~cachec.methods.forecasting.ForecastingMethod`), in registry order:
    a new one (a module of this package) combines with every decision without a change here."""
    from . import METHODS
    from .forecasting import ForecastingMethod

    return [name for name, cls in METHODS.items() if issubclass(cls, ForecastingMethod)]


def forecast_keys(forecaster: type[Method]) -> list[str]:
    """The parameters of ``forecaster`` a hybrid accepts: those of its forecast only."""
    return [p.name for p in forecaster.all_params() if p.name not in DECISION_KEYS]


def check_forecaster_args(name: str, args: str) -> None:
    """Refuse a forecaster argument a hybrid gives to the decision (``N``, ``streams``, ...) or a bare value."""
    from . import METHODS

    accepted = forecast_keys(METHODS[name])
    for item in (a.strip() for a in args.split(",") if a.strip()):
        key = item.partition("=")[0].strip()
        if "=" not in item or key not in accepted:
            keys = f"keys: {', '.join(accepted)}" if accepted else "it takes no key"
            raise PolicyError(f"{name} in a hybrid forecasts the steps the decision reuses, so {item!r} does not apply "
                              f"({keys}, as KEY=VALUE; the schedule, warmup and final are the decision's)")


class HybridController(Controller):
    """The decision's controller, with the forecast coefficients of each step added to the action
    that concludes it (``F``: fold the fresh residual in; ``R``: forecast it)."""

    def __init__(self, policy: HybridMethod, inner: Controller, num_steps: int | None):
        super().__init__(policy, num_steps)
        self.inner = inner
        self.tracker = ForecastTracker(policy.forecaster.forecast_method())

    def decide(self, step: int, signal: float | None = None) -> bool:  # the decision's own, for callers that ask
        return self.inner.decide(step, signal)

    def actions(self, step: int, ctx: StepContext) -> Actions:
        inner = self.inner.actions(step, ctx)
        try:
            action = next(inner)
            while True:
                if action.letter:
                    action.inputs = {**action.inputs, **self.tracker.step_inputs(step, action.letter == "F")}
                action = inner.send((yield action))
        except StopIteration:
            return


class HybridMethod(Method):
    """A decision method and a forecasting method, composed (see the module docstring)."""

    name = "hybrid"  # not a registered name: the spec is DECISION+FORECASTER
    doc = "a step decision (probe or mask) whose reused steps are forecasts of the cached blocks' residual"
    granularity = "step"

    def __init__(self, decision: Method, forecaster: Method):
        self.decision, self.forecaster = decision, forecaster
        super().__init__(decision.params)
        self.dynamic = decision.dynamic
        self.variants = decision.variants
        self.needs = decision.needs

    @property
    def needs_data(self) -> bool:
        return self.decision.needs_data  # the decision's, as its data is

    @property
    def length_bound(self) -> bool:
        return self.decision.length_bound  # a fixed mask decides the steps

    @property
    def data(self):
        return self.decision.data

    def with_data(self, data: dict) -> HybridMethod:
        out = HybridMethod(self.decision.with_data(data), self.forecaster)
        out.validate()
        return out

    def with_params(self, **changes) -> HybridMethod:
        out = HybridMethod(self.decision.with_params(**changes), self.forecaster)  # its params are the decision's
        out.validate()
        return out

    def validate(self) -> None:
        if self.decision.name not in DECISIONS:
            raise PolicyError(f"{self.decision.name} cannot lead a hybrid: its reuse is not a step-level residual; "
                              f"decisions: {', '.join(DECISIONS)}")
        if self.forecaster.name not in forecasters():
            raise PolicyError(f"{self.forecaster.name} is not a forecaster; a hybrid's second part is one of "
                              f"{', '.join(forecasters())}")
        if self.params.get("per_sample"):
            raise PolicyError(f"{self.decision.spec}: per_sample=1 cannot be combined with a forecast (each batch item "
                              "would need its own forecast coefficients); use per_sample=0")

    @property
    def spec(self) -> str:
        f = self.forecaster
        defaults = type(f).Params()
        args = ",".join(f"{k}={f.params[k]}" for k in forecast_keys(type(f)) if f.params[k] != defaults[k])
        return f"{self.decision.spec}+{f.name}" + (f":{args}" if args else "")

    def data_source(self) -> str:
        return self.decision.data_source()

    def load_data(self) -> dict:
        return self.decision.load_data()

    def controller(self, num_steps: int | None) -> Controller:
        return HybridController(self, self.decision.controller(num_steps), num_steps)

    def plan_key(self, num_blocks: int) -> tuple:
        m = self.forecaster.forecast_method()
        return (*self.decision.plan_key(num_blocks), "+", m.name, m.state, m.predict_writes)

    def forecast_method(self):
        return self.forecaster.forecast_method()

    def plan(self, planner) -> Plan:
        """The decision's plan, with every residual it caches forecast instead of copied."""
        plan = self.decision.plan(planner.forecasting(self.forecaster.forecast_method()))
        if not plan.step_inputs:
            raise ModelError(f"{self.spec}: the plan of {self.decision.name} cached no residual to forecast "
                             "(a bug in the hybrid's list of decisions)")
        return plan
