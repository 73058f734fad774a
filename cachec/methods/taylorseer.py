"""``taylorseer:N,O`` — TaylorSeer (Liu et al., 2025): full every N steps; cached steps forecast
each stream by a Taylor series of order O whose derivatives are finite differences taken at full
steps (:class:`cachec.forecast.Taylor`). Order 0 is FORA.

Where the full steps fall after the warm-up of W steps (``placement=``): ``cachec`` (the default)
counts N from the last warm-up step (W-1+N, W-1+2N, ...: 0, 1, 5, 9 for N=4, W=2);
``diffusers`` is diffusers' ``TaylorSeerCacheConfig(cache_interval=N, disable_cache_before_step=W)``,
which computes when ``(step - W - 1) % N == 0`` (W+1, W+1+N, ...: 0, 1, 3, 7). Compare with that
hook only at the same placement: the schedules differ (docs/methods.md)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PolicyError
from ..forecast import Taylor
from . import register
from .base import Params, param
from .forecasting import STREAMS, ForecastController, ForecastingMethod

PLACEMENTS = ("cachec", "diffusers")


@dataclass(frozen=True)
class TaylorSeerParams(Params):
    N: int = param(4, "interval: one full step, then N-1 forecast steps", 1, 1000)
    O: int = param(2, "Taylor order (0 = FORA's reuse)", 0, 4)  # noqa: E741 - the paper's name
    streams: str = STREAMS
    warmup: int = param(2, "first K steps always full", 0)
    placement: str = param("cachec", "full steps after the warm-up W: cachec: every N from step W-1 (W-1+N, ...); "
                                     "diffusers: diffusers' hook, (step - W - 1) % N == 0 (W+1, W+1+N, ...)")


class TaylorSeerController(ForecastController):
    """The interval, counted from the last full step (``cachec``) or as diffusers' hook places it."""

    def rule(self, step, signal):
        p = self.policy.params
        if p.placement == "diffusers":
            return (step - p.warmup - 1) % p.N == 0
        return super().rule(step, signal)


@register
class TaylorSeerMethod(ForecastingMethod):
    name = "taylorseer"
    doc = "TaylorSeer: forecast each cached stream by a Taylor series of finite differences taken at full steps; full every N"
    Params = TaylorSeerParams
    rank = 6
    controller_cls = TaylorSeerController

    def validate(self):
        super().validate()
        if self.params.placement not in PLACEMENTS:
            raise PolicyError(f"taylorseer: placement={self.params.placement!r}; accepted: {', '.join(PLACEMENTS)}")

    def forecast_method(self):
        return Taylor(self.params.O)
