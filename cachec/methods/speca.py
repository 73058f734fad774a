"""``speca:tau0,N,O`` — SpeCa (Liu et al., 2025): forecast, then verify. TaylorSeer drafts every cached
step; from the ``checks+1``-th forecast step after a full one, the step also computes the last
block's attention and MLP exactly (on the forecast input) and compares them with their forecasts.
When the relative error exceeds ``τ(s) = max(tau_min, tau0·decay^(s/T))`` the draft is rejected
and the *next* step is full (SpeCa's released code; the verified step keeps its output). A full
step comes at the latest N steps after the last one.

Each verified step reads one scalar back (the error, in ``stats.signals``); the acceptance rate is
the share of verified steps whose error stayed within τ (:func:`acceptance`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ModelError, PolicyError
from ..forecast import PREDICT, ForecastMethod, ForecastTracker, Taylor
from ..planner.plan import Plan
from ..planner.segments import example, linear_mix, traced
from ..program import Load, Run, cache_name
from . import register
from . import verify as verify_segment
from .base import Action, Actions, Controller, Method, Params, StepContext, param

ERROR = "speca__error"


@dataclass(frozen=True)
class SpeCaParams(Params):
    N: int = param(9, "a full step at the latest N steps after the last (SpeCa: after 8 forecasts)", 1, 1000)
    O: int = param(2, "Taylor order of the draft", 0, 4)  # noqa: E741 - the paper's name
    checks: int = param(2, "forecast steps after a full one that are not verified", 0)
    tau0: float = param(7.0, "threshold τ(s) = max(tau_min, tau0·decay^(s/T))", 0.0)
    decay: float = param(0.3, "threshold decay over the trajectory", 0.0, 1.0)
    tau_min: float = param(0.1, "threshold floor", 0.0)
    warmup: int = param(3, "first K steps always full", 0)


def threshold(p: SpeCaParams, step: int, num_steps: int) -> float:
    return max(p.tau_min, p.tau0 * p.decay ** (step / num_steps))


def acceptance(errors: list[float | None], thresholds: list[float]) -> float | None:
    """The share of verified steps (those with an error) whose error was within their threshold."""
    verified = [(e, t) for e, t in zip(errors, thresholds, strict=True) if e is not None]
    return sum(e <= t for e, t in verified) / len(verified) if verified else None


class SpeCaController(Controller):
    """Full when forced, after a rejection, or N steps after the last full step; otherwise a draft,
    verified from the ``checks+1``-th forecast step on."""

    def __init__(self, policy, num_steps):
        if num_steps is None:
            raise PolicyError(f"{policy.spec}: the threshold τ(s) depends on s/T, so the trajectory length must be "
                              "known (CacheRuntime(num_steps=...) or reset(num_steps))")
        super().__init__(policy, num_steps)
        self.tracker = ForecastTracker(policy.forecast_method())
        self.rejected = False

    def rule(self, step, signal):
        return self.rejected or step - self.last_full >= self.policy.params.N

    def on_full(self, step):
        self.rejected = False

    def actions(self, step: int, ctx: StepContext) -> Actions:
        p = self.policy.params
        if self.decide(step):
            yield Action("full", "F", self.tracker.step_inputs(step, True))
            return
        inputs = self.tracker.step_inputs(step, False)
        if step - self.last_full <= p.checks:
            yield Action("reuse", "R", inputs)
            return
        values = yield Action("verify", "R", inputs, read=(ERROR,))
        self.rejected = values[ERROR] > threshold(p, step, self.num_steps)


@register
class SpeCaMethod(Method):
    name = "speca"
    doc = ("SpeCa: TaylorSeer drafts cached steps; from the (checks+1)-th on, the last block is computed and compared "
           "with its forecast, and an error above τ(s) makes the next step full")
    granularity = "module"
    dynamic = True  # decides on a value read back, one decision for the batch (served alone, like a probe policy)
    main = "tau0"  # the threshold, as for the probe policies (cachec calibrate --threshold-map sweeps it)
    Params = SpeCaParams
    controller_cls = SpeCaController
    variants = ("full", "reuse", "verify")
    rank = 9

    def forecast_method(self):
        return Taylor(self.params.O)

    def plan_key(self, num_blocks: int) -> tuple:
        return (self.name, self.params.O)

    def plan(self, planner) -> Plan:
        return verified_forecast(planner, self.forecast_method(), len(planner.blocks) - 1, ERROR)


def verified_forecast(planner, method: ForecastMethod, block: int, error: str) -> Plan:
    """:meth:`~cachec.planner.Planner.forecast` on ``module`` streams, plus a ``verify`` variant: the
    forecast step with block ``block``'s attention/MLP computed exactly on the forecast input *and*
    forecast, and ``error`` (:mod:`cachec.methods.verify`) comparing the two for the controller.
    The verified step keeps the computed values."""
    if method.predict_writes:  # the verify variant below forecasts without writing state
        raise ModelError(f"a verified forecast needs a method whose forecast writes no state; {method.name} does")
    full_before = [Run(s) for s in planner.order]
    plan = planner.forecast(method, "module")
    ex = plan.examples
    by_seg = planner.region_by_segment()
    checked = [s for s in planner.block_segments[block] if s in by_seg]
    if not checked:
        raise ModelError(f"{planner.captured.model_class}: block {block} has no attention or MLP output to verify")
    # the reuse variant, with the checked regions run and their forecasts made beside them
    verify, pairs = [], []
    for op in full_before:
        if op.segment not in by_seg:
            verify.append(op)
            continue
        outputs = plan.segment(op.segment).outputs
        state = [[cache_name(op.segment, str(k), n) for n in method.state_names()] for k in range(len(outputs))]
        loads = [Load(c, c) for names in state for c in names]
        if op.segment not in checked:
            verify.extend(loads + [Run(f"{op.segment}_fc_predict")])
            continue
        guesses = [f"{op.segment}__guess{k}" for k in range(len(outputs))]
        for g, value in zip(guesses, outputs, strict=True):
            ex[g] = ex[value]
        mix = planner.add_segment(plan, f"{op.segment}_fc_guess",
                                  linear_mix([(names, [g]) for names, g in zip(state, guesses, strict=True)],
                                             PREDICT, ex), "cache")
        verify.extend(loads + [Run(mix), op])
        pairs.extend(zip(guesses, outputs, strict=True))
    examples = [(n, example(ex[n])) for pair in pairs for n in pair]
    ex[error] = torch.empty(())
    gm = traced(verify_segment.relative_error(len(pairs)), examples, [error], "VerifyError")
    plan.variants["verify"] = verify + [Run(planner.add_segment(plan, "verify_error", gm, "cache"))]
    plan.signal = error
    return plan
