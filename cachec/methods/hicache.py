"""``hicache:N,O,sigma`` — HiCache (Feng et al., 2025): TaylorSeer's finite differences on a
scaled Hermite basis (:class:`cachec.forecast.Hermite`); full every N steps."""

from __future__ import annotations

from dataclasses import dataclass

from ..forecast import Hermite
from . import register
from .base import Params, param
from .forecasting import STREAMS, ForecastingMethod


@dataclass(frozen=True)
class HiCacheParams(Params):
    N: int = param(5, "interval: one full step, then N-1 forecast steps", 1, 1000)
    O: int = param(2, "order of the Hermite expansion", 0, 4)  # noqa: E741 - the paper's name
    sigma: float = param(0.5, "Hermite scale σ", 0.0, 10.0)
    streams: str = STREAMS
    warmup: int = param(3, "first K steps always full", 0)


@register
class HiCacheMethod(ForecastingMethod):
    name = "hicache"
    doc = "HiCache: TaylorSeer's finite differences on a scaled Hermite basis; full every N"
    Params = HiCacheParams
    rank = 7

    def forecast_method(self):
        return Hermite(self.params.O, self.params.sigma)
