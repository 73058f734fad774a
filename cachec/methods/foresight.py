"""``foresight:γ,N`` — Foresight (Adnan et al., 2025, "Adaptive layer reuse for accelerated and
high-quality text-to-video generation"): shallow layers change little between steps and deep ones
fast, so each layer gets its own reuse threshold, estimated during a warm-up of full steps.

It is per-block adaptive caching (:mod:`cachec.methods.blockcache`) with two settings fixed:
``metric=mse`` (a block's change is the mean squared change of its residual) and
``scale=foresight`` (block i's threshold is ``γ·λ_i``, ``λ_i`` the changes of the last three
warm-up steps weighted 1, 0.1, 0.01: eq. 40 of the survey). Block i reuses its residual while
its predicted change stays below ``γ·λ_i`` (eq. 41) and is recomputed at least every N steps:
``foresight:γ,N=…,warmup=W`` is ``blockcache:γ,N=…,warmup=W,metric=mse,scale=foresight``.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import register
from .base import Params, param
from .blockcache import BlockCacheMethod


@dataclass(frozen=True)
class ForesightParams(Params):
    t: float = param(1.0, "gamma: a block is reused while its predicted change stays below gamma times its warm-up "
                          "threshold lambda", 0.0, 100.0)
    N: int = param(4, "reuse bound: a block is recomputed at least every N steps", 1, 1000)
    warmup: int = param(4, "first K steps always full; the last three give each block's lambda (needs >= 4)", 0)


@register
class ForesightMethod(BlockCacheMethod):
    name = "foresight"
    doc = ("Foresight: per-block reuse while a block's predicted mean squared change stays below gamma times its "
           "warm-up threshold (blockcache with metric=mse, scale=foresight)")
    Params = ForesightParams
    rank = 1000

    @property
    def scale(self) -> str:
        return "foresight"

    @property
    def metric(self) -> str:
        return "mse"
