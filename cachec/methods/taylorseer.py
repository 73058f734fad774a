"""``taylorseer:N,O`` — TaylorSeer (Liu et al., 2025): full every N steps; cached steps forecast
each stream by a Taylor series of order O whose derivatives are finite differences taken at full
steps (:class:`cachec.forecast.Taylor`). Order 0 is FORA."""

from __future__ import annotations

from dataclasses import dataclass

from ..forecast import Taylor
from . import register
from .base import Params, param
from .forecasting import STREAMS, ForecastPolicy


@dataclass(frozen=True)
class TaylorSeerParams(Params):
    N: int = param(4, "interval: one full step, then N-1 forecast steps", 1, 1000)
    O: int = param(2, "Taylor order (0 = FORA's reuse)", 0, 4)  # noqa: E741 - the paper's name
    streams: str = STREAMS
    warmup: int = param(2, "first K steps always full", 0)


@register
class TaylorSeerPolicy(ForecastPolicy):
    name = "taylorseer"
    doc = "TaylorSeer: forecast each cached stream by a Taylor series of finite differences taken at full steps; full every N"
    Params = TaylorSeerParams
    rank = 6

    def forecast_method(self):
        return Taylor(self.params.O)
