"""``foca:N`` — FoCa (Zheng et al., 2025): features integrated as an ODE step by step, a BDF2
predictor and a Heun corrector (cachec's reading of the paper, :class:`cachec.forecast.FoCa`);
full every N steps."""

from __future__ import annotations

from dataclasses import dataclass

from ..forecast import FoCa
from . import register
from .base import Params, param
from .forecasting import STREAMS, ForecastingMethod


@dataclass(frozen=True)
class FoCaParams(Params):
    N: int = param(5, "interval: one full step, then N-1 forecast steps", 1, 1000)
    streams: str = STREAMS
    warmup: int = param(3, "first K steps always full", 0)


@register
class FoCaMethod(ForecastingMethod):
    name = "foca"
    doc = "FoCa: features integrated as an ODE step by step (BDF2 predictor, Heun corrector; cachec's reading); full every N"
    Params = FoCaParams
    rank = 8

    def forecast_method(self):
        return FoCa()
