"""``freqca:N,O,sigma,cutoff`` — FreqCa (2025): one cached stream, the cumulative residual feature
(the block stack's output minus its input: FreqCa's CRF, O(1) memory instead of O(L)), forecast
per frequency band — the low band reused from the last full step, the high band by HiCache's
Hermite series of finite differences taken at full steps. Full every N steps.

The bands are a DCT over the token grid (:mod:`cachec.methods.band_split`; cachec's reading of the
paper's cutoff in docs/methods.md). The cache holds O+1 tensors of the stream, against
TaylorSeer's O+1 per attention/MLP output of every block."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ModelError
from ..forecast import ForecastMethod, HermiteHighTerms
from ..planner.plan import Plan, insert_after, replace
from ..planner.segments import StreamPair, delta_apply, delta_write, example, traced
from ..program import Run, cache_name
from . import band_split, register
from .base import Method, Params, param
from .forecasting import ForecastController


@dataclass(frozen=True)
class FreqCaParams(Params):
    N: int = param(6, "interval: one full step, then N-1 forecast steps", 1, 1000)
    O: int = param(2, "order of the high band's Hermite expansion", 0, 4)  # noqa: E741 - the paper's name
    sigma: float = param(0.71, "Hermite scale σ of the high band", 0.0, 10.0)
    cutoff: float = param(0.1, "low band: DCT frequencies of radius <= cutoff × the largest", 0.0, 1.0)
    warmup: int = param(3, "first K steps always full", 0)


@register
class FreqCaMethod(Method):
    name = "freqca"
    doc = ("FreqCa: the stack residual (cumulative residual feature) as the one cached stream; its low DCT band "
           "reused, its high band forecast by a Hermite series; full every N")
    granularity = "step"
    main = "N"
    Params = FreqCaParams
    controller_cls = ForecastController
    rank = 9

    def forecast_method(self):
        return HermiteHighTerms(self.params.O, self.params.sigma)

    def plan_key(self, num_blocks: int) -> tuple:
        m = self.forecast_method()
        return (self.name, m.state, self.params.cutoff)

    def plan(self, planner) -> Plan:
        return band_forecast(planner, self.forecast_method(), self.params.cutoff)


def band_forecast(planner, method: ForecastMethod, cutoff: float) -> Plan:
    """The residual of the whole block stack (the cumulative residual feature, one stream per
    residual stream) forecast with its low band kept from the last full step
    (:mod:`cachec.methods.band_split`). ``method``'s forecast row must leave out ``D_0``: the cached
    step computes ``R̂ = D_0 + G − low(G)`` from its ``G``."""
    plan = planner.new_plan()
    ex = plan.examples
    segs = planner.range_segments(0, len(planner.blocks) - 1)
    inputs, outputs = planner.range_io(segs)
    pairs = planner.pair_streams(inputs, outputs, "fc_stack")
    for p in pairs:
        if p.base is None or not band_split.splittable(ex[p.output].shape):
            raise ModelError(f"{planner.captured.model_class}: FreqCa splits token streams [batch, tokens, channels] "
                             f"that are residuals of the block stack; {p.output} is "
                             f"{'not a residual' if p.base is None else 'shaped ' + str(list(ex[p.output].shape))}")
    streams = [f"fc_stack__r{k}" for k in range(len(pairs))]
    banded = [StreamPair(p.output, p.base, f"fc_stack__b{k}") for k, p in enumerate(pairs)]
    for p, r, b in zip(pairs, streams, banded, strict=True):
        ex[r] = ex[b.cache] = ex[p.output]
    write = planner.add_segment(plan, "fc_stack_delta", delta_write(
        [StreamPair(p.output, p.base, r) for p, r in zip(pairs, streams, strict=True)], ex), "cache")
    apply = planner.add_segment(plan, "fc_stack_apply", delta_apply(banded, ex), "cache")
    update, forecast = planner.forecast_ops(plan, "fc_stack", streams, method)
    fn = band_split.band_forecast(cutoff)
    band_runs = []
    for k, (r, b) in enumerate(zip(streams, banded, strict=True)):
        last = cache_name("fc_stack", str(k), method.state_names()[0])
        x = example(ex[r])
        gm = traced(fn, [(r, x), (last, x)], [b.cache], f"BandForecast{k}")
        band_runs.append(Run(planner.add_segment(plan, f"fc_stack_band{k}", gm, "cache")))
    full = plan.variants["full"]
    plan.variants["reuse"] = replace(full, segs, forecast + band_runs + [Run(apply)])
    plan.variants["full"] = insert_after(full, segs[-1], [Run(write)] + update)
    return plan
