"""``abcache:N,k`` — AB-Cache (Yu et al., 2025): full every N steps; a cached step forecasts each
stream by the k-th-order Adams–Bashforth linear combination of its last k computed values
(:class:`cachec.forecast.AdamsBashforth`; the coefficients are cachec's reading, docs/methods.md).

The coefficients follow the real positions of the full steps, so the method is also a forecaster
of hybrids (``fbcache:0.1+abcache:k=3``), whose decision spaces full steps irregularly. ``k=1``
reuses the last value (FORA); ``k=2`` is TaylorSeer's order 1."""

from __future__ import annotations

from dataclasses import dataclass

from ..forecast import AdamsBashforth
from . import register
from .base import Params, param
from .forecasting import STREAMS, ForecastingMethod


@dataclass(frozen=True)
class ABCacheParams(Params):
    N: int = param(3, "interval: one full step, then N-1 forecast steps", 1, 1000)
    k: int = param(2, "Adams–Bashforth order: the forecast combines the last k computed values (1 = reuse)", 1, 4)
    streams: str = STREAMS
    warmup: int = param(2, "first K steps always full", 0)


@register
class ABCacheMethod(ForecastingMethod):
    name = "abcache"
    doc = "AB-Cache: forecast each cached stream by the k-th-order Adams–Bashforth combination of its last k computed values; full every N"
    Params = ABCacheParams
    rank = 9

    def forecast_method(self):
        return AdamsBashforth(self.params.k)
