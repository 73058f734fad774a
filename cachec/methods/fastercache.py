"""``fastercache:N,w=0.5`` — FasterCache (Lv et al., 2024), its attention reuse: inside a timestep
window ``lo < t < hi`` self-attention is computed every N steps; a skipped step extrapolates the
last two outputs, ``Â = A_last + w·(A_last − A_prev)``.

The rule is diffusers' ``FasterCacheBlockHook`` for a model run without a CFG batch
(``is_guidance_distilled=True``, or one branch of sequential CFG, which cachec keeps apart): compute
at step 0, outside the window, and when ``step % N == 0``; otherwise extrapolate. As in the hook,
every output — computed *or extrapolated* — shifts into the two-slot history (``A_prev ← A_last,
A_last ← output``), and the first computed output fills both slots. Only self-attention
(``Attention`` modules that are not cross-attention) is cached; cross-attention and MLPs always run.
Defaults are diffusers': N=2, window (−1, 681), w=0.5 (the paper lets w rise from 0 to 1 over the
trajectory; diffusers' default keeps it constant).

Not implemented: FasterCache's CFG-Cache (a batched-CFG step that runs only the conditional half
and rebuilds the unconditional output from FFT band deltas). It needs a variant that runs the model
at half the call's batch with caches kept per CFG pair, and FFTs that TensorRT cannot build; see
docs/methods.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PolicyError
from ..forecast import ForecastMethod, ForecastTracker, Matrix
from . import register
from .base import Action, Controller, Method, Params, param


class Extrapolate(ForecastMethod):
    """State ``[last, prev]``. A computed step: ``last ← A``, ``prev ← last`` (``← A`` on the first).
    A skipped step: ``Â = (1+w)·last − w·prev``, then ``last ← Â``, ``prev ← last``."""

    name = "extrapolate"
    state = 2
    predict_writes = (0, 1)

    def __init__(self, w: float):
        self.w = w

    def state_names(self) -> list[str]:
        return ["last", "prev"]

    def update(self, n_prev_full: int, delta: int) -> Matrix:
        # columns [A, last, prev]
        return [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0] if n_prev_full > 0 else [1.0, 0.0, 0.0]]

    def predict(self, x: int, n_full: int) -> Matrix:
        estimate = [1.0 + self.w, -self.w]  # over [last, prev]
        return [estimate, list(estimate), [1.0, 0.0]]


@dataclass(frozen=True)
class FasterCacheParams(Params):
    N: int = param(2, "inside the window, self-attention computed every N steps (1: always)", 1, 1000)
    w: float = param(0.5, "extrapolation weight: A_last + w * (A_last - A_prev)", 0.0, 10.0)
    lo: float = param(-1.0, "window: skip only when lo < timestep < hi")
    hi: float = param(681.0, "window upper end (exclusive)")


class FasterCacheController(Controller):
    def __init__(self, policy, num_steps):
        super().__init__(policy, num_steps)
        self.tracker = ForecastTracker(policy.forecast_method())

    def actions(self, step, ctx):
        p = self.policy.params
        full = True
        if not self.forced(step):
            t = ctx.timestep() if ctx.timestep is not None else None
            if t is None:
                raise PolicyError(f"{self.policy.spec}: the window lo < t < hi needs the step's timestep, and this "
                                  "model's calls carry none (no 'timestep' input)")
            full = not (p.lo < t < p.hi and step % p.N != 0)
        if full:
            self.last_full = step
        yield Action("full" if full else "reuse", "F" if full else "R", self.tracker.step_inputs(step, full))


@register
class FasterCachePolicy(Method):
    name = "fastercache"
    doc = ("FasterCache (attention part): inside lo < t < hi self-attention computed every N steps, skipped steps "
           "extrapolate A_last + w*(A_last - A_prev)")
    granularity = "attn"
    main = "N"
    Params = FasterCacheParams
    controller_cls = FasterCacheController
    rank = 18

    def validate(self) -> None:
        if not self.params.lo < self.params.hi:
            raise PolicyError(f"fastercache: the window needs lo < hi; got lo={self.params.lo}, hi={self.params.hi}")

    def forecast_method(self):
        return Extrapolate(self.params.w)

    def plan_key(self, num_blocks: int) -> tuple:
        return (self.name,)

    def plan(self, planner) -> None:
        planner.forecast(self.forecast_method(), "module", kinds=("attn",))
