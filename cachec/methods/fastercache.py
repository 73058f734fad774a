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

CFG-Cache (``cfg=n``, 0: off): on a batched-CFG call (the batch is ``[uncond; cond]``, diffusers'
concatenation) inside ``cfg_lo < t < cfg_hi``, every step but step 0 and the multiples of n runs
only the conditional half (an action on those items: the runtime gathers them, runs the step's
variant, scatters back) and rebuilds the unconditional output from the conditional one and the
band deltas of the last step that ran both halves, scaled by ``alpha_low`` while
``low_lo < t < low_hi`` and by ``alpha_high`` while ``high_lo < t < high_hi`` (the scaling
compounds, as the hook's). The rule and the arithmetic are diffusers' ``FasterCacheDenoiserHook``
(see :mod:`cachec.methods.cfg_cache`), with its block hooks for a CFG batch: attention is then
skipped only on the steps that run the conditional half, and extrapolated from its history. The
FFTs need a backend with the ``fft`` capability (eager, Inductor).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PolicyError
from ..forecast import ForecastMethod, ForecastTracker, Matrix
from ..planner.plan import Plan
from . import register
from .base import Action, Controller, Method, Params, param
from .cfg_cache import WEIGHTS, add_cfg_cache


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
    cfg: int = param(0, "CFG-Cache on a [uncond; cond] batch: the uncond half runs every cfg steps and is rebuilt "
                        "from the cond half between (0: off)", 0, 1000)
    cfg_lo: float = param(-1.0, "CFG-Cache window: rebuild only when cfg_lo < timestep < cfg_hi")
    cfg_hi: float = param(641.0, "CFG-Cache window upper end (exclusive)")
    alpha_low: float = param(1.1, "CFG-Cache: low-band delta scaled by this on each rebuilt step in the low window",
                             0.0, 10.0)
    alpha_high: float = param(1.1, "CFG-Cache: high-band delta scaled by this on each rebuilt step in the high "
                                   "window", 0.0, 10.0)
    low_lo: float = param(99.0, "low-band weight window: alpha_low applies when low_lo < timestep < low_hi")
    low_hi: float = param(901.0, "low-band weight window upper end (exclusive)")
    high_lo: float = param(-1.0, "high-band weight window: alpha_high applies when high_lo < timestep < high_hi")
    high_hi: float = param(301.0, "high-band weight window upper end (exclusive)")


def within(t: float, lo: float, hi: float) -> bool:
    return lo < t < hi


class FasterCacheController(Controller):
    def __init__(self, policy, num_steps):
        super().__init__(policy, num_steps)
        self.tracker = ForecastTracker(policy.forecast_method())

    def timestep(self, ctx) -> float:
        t = ctx.timestep() if ctx.timestep is not None else None
        if t is None:
            raise PolicyError(f"{self.policy.spec}: its timestep windows need the step's timestep, and this "
                              "model's calls carry none (no 'timestep' input)")
        return t

    def actions(self, step, ctx):
        p = self.policy.params
        if p.cfg:
            yield from self.cfg_actions(step, ctx)
            return
        full = True
        if not self.forced(step):
            full = not (within(self.timestep(ctx), p.lo, p.hi) and step % p.N != 0)
        if full:
            self.last_full = step
        yield Action("full" if full else "reuse", "F" if full else "R", self.tracker.step_inputs(step, full))

    def cfg_actions(self, step, ctx):
        """A step on a ``[uncond; cond]`` batch. Both halves run (then the band deltas are recorded)
        at step 0, forced steps, outside the CFG window and every ``cfg`` steps; otherwise the
        conditional half runs alone (attention extrapolated inside its window, except every N
        steps) and the unconditional half is rebuilt (schedule letter ``C``)."""
        p = self.policy.params
        if ctx.batch % 2:
            raise PolicyError(f"{self.policy.spec}: CFG-Cache needs a classifier-free-guidance batch [uncond; cond] "
                              f"of even size; this call has batch {ctx.batch} (use cfg=0 without a CFG batch)")
        forced = self.forced(step)
        t = None if forced else self.timestep(ctx)
        if forced or not within(t, p.cfg_lo, p.cfg_hi) or step % p.cfg == 0:
            self.last_full = step
            yield Action("full", "F", self.tracker.step_inputs(step, True))
            yield Action("cfg_record")
            return
        full = not (within(t, p.lo, p.hi) and step % p.N != 0)
        if full:
            self.last_full = step
        cond = tuple(range(ctx.batch // 2, ctx.batch))
        yield Action("full" if full else "reuse", "F" if full else "R", self.tracker.step_inputs(step, full),
                     items=cond)
        weights = (p.alpha_low if within(t, p.low_lo, p.low_hi) else 1.0,
                   p.alpha_high if within(t, p.high_lo, p.high_hi) else 1.0)
        yield Action("cfg_rebuild", "C", dict(zip(WEIGHTS, weights, strict=True)))


@register
class FasterCacheMethod(Method):
    name = "fastercache"
    doc = ("FasterCache: inside lo < t < hi self-attention computed every N steps, skipped steps extrapolate "
           "A_last + w*(A_last - A_prev); cfg=n adds CFG-Cache (uncond half rebuilt from FFT band deltas)")
    granularity = "attn"
    main = "N"
    Params = FasterCacheParams
    controller_cls = FasterCacheController
    rank = 18

    def validate(self) -> None:
        p = self.params
        for key in ("", "cfg_", "low_", "high_"):
            lo, hi = p[key + "lo"], p[key + "hi"]
            if not lo < hi:
                raise PolicyError(f"fastercache: the window needs {key}lo < {key}hi; got {key}lo={lo}, {key}hi={hi}")

    @property
    def cfg_pairs(self) -> bool:
        return bool(self.params.cfg)

    @property
    def needs(self) -> frozenset[str]:
        """CFG-Cache's rebuild runs complex FFTs, which only some backends lower."""
        return frozenset({"fft"}) if self.params.cfg else frozenset()

    def unsupported(self, backend: str, capable: list[str]) -> str:
        return (f"{self.spec}: CFG-Cache rebuilds the unconditional output with complex FFTs on the halves of the "
                f"batch, which the {backend} backend does not lower; use --backend {' or '.join(capable)}, or cfg=0 "
                "(attention reuse only)")

    def required_variants(self) -> set[str]:
        return {"full", "reuse", "cfg_record", "cfg_rebuild"} if self.params.cfg else {"full", "reuse"}

    def forecast_method(self):
        return Extrapolate(self.params.w)

    def plan_key(self, num_blocks: int) -> tuple:
        return (self.name, "cfg") if self.params.cfg else (self.name,)

    def plan(self, planner) -> Plan:
        plan = planner.forecast(self.forecast_method(), "module", kinds=("attn",))
        if self.params.cfg:
            add_cfg_cache(planner, plan, "fastercache_cfg", self.spec)
        return plan
