"""``fora:N`` — FORA (Selvaraju et al., 2024): reuse every block's attention and MLP outputs for
N−1 steps after a full one. The adaLN modulation, gates and residual adds still run on the
current step (conditioning is hoisted), which is what FORA does."""

from __future__ import annotations

from dataclasses import dataclass

from ..planner.plan import Plan
from . import register
from .base import Interval, Method, Params, param


@dataclass(frozen=True)
class ForaParams(Params):
    N: int = param(3, "interval: one full step, then N-1 reuse steps", 1, 1000)


@register
class ForaMethod(Method):
    name = "fora"
    doc = "FORA: reuse every block's attention and MLP outputs under the current adaLN; full every N steps"
    granularity = "module"
    main = "N"
    Params = ForaParams
    controller_cls = Interval
    rank = 2

    def plan(self, planner) -> Plan:
        return planner.module_reuse()
