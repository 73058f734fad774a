"""``freqca:N,O,sigma,cutoff`` — FreqCa (2025): one cached stream, the cumulative residual feature
(the block stack's output minus its input: FreqCa's CRF, O(1) memory instead of O(L)), forecast
per frequency band — the low band reused from the last full step, the high band by HiCache's
Hermite series of finite differences taken at full steps. Full every N steps.

The bands are a DCT over the token grid (:mod:`cachec.planner.band_split`; cachec's reading of the
paper's cutoff in docs/methods.md). The cache holds O+1 tensors of the stream, against
TaylorSeer's O+1 per attention/MLP output of every block."""

from __future__ import annotations

from dataclasses import dataclass

from ..forecast import HermiteHighTerms
from . import register
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

    def plan(self, planner) -> None:
        planner.band_forecast(self.forecast_method(), self.params.cutoff)
