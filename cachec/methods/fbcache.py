"""``fbcache:t`` — First-Block Cache (ParaAttention / cache-dit): block 0 always runs and its
residual is the probe; when its relative L1 change to the last full step is below t, the other
blocks' delta is reused."""

from __future__ import annotations

from dataclasses import dataclass

from ..planner.plan import Plan
from . import register
from .base import Controller, Method, ProbeParams, param


@dataclass(frozen=True)
class FBCacheParams(ProbeParams):
    t: float = param(0.08, "threshold on the relative L1 change of block 0's residual", 0.0, 10.0)


class FBCacheController(Controller):
    def rule(self, step, signal):
        return not (signal < self.policy.params.t)


@register
class FBCacheMethod(Method):
    name = "fbcache"
    doc = "First-Block Cache: block 0's residual is the probe; below t (rel. L1 to the last full step) the other blocks' delta is reused"
    dynamic = True
    main = "t"
    Params = FBCacheParams
    controller_cls = FBCacheController
    variants = ("full", "head", "tail_full", "tail_reuse")
    rank = 4

    def plan(self, planner) -> Plan:
        return planner.probe_skip(1, 0, "fbcache", "fb_b0", "fb_tail")
