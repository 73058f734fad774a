"""``delta:N,blocks=a-b`` — Δ-DiT (Chen et al., 2024): reuse the residual delta ``out − in`` of a
block range for N−1 steps after a full one; the other blocks run every step."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PolicyError
from ..planner.plan import Plan
from . import register
from .base import Interval, Method, Params, param


@dataclass(frozen=True)
class DeltaParams(Params):
    N: int = param(2, "interval: one full step, then N-1 reuse steps", 1, 1000)
    blocks: str = param("", "block range a-b (default: all blocks but the first and last)")


@register
class DeltaMethod(Method):
    name = "delta"
    doc = "Δ-DiT: reuse the residual delta of a block range (blocks=a-b, 0-based, inclusive); full every N"
    granularity = "block"
    main = "N"
    Params = DeltaParams
    controller_cls = Interval
    rank = 3

    def plan_key(self, num_blocks: int) -> tuple:
        return (self.name, self.block_range(num_blocks))

    def block_range(self, num_blocks: int) -> tuple[int, int]:
        text = self.params.blocks
        if not text:
            if num_blocks < 3:
                raise PolicyError(f"delta needs blocks=a-b for a model of {num_blocks} blocks")
            return 1, num_blocks - 2
        try:
            a, b = (int(x) for x in text.split("-"))
        except ValueError:
            raise PolicyError(f"delta: blocks={text!r} is not a range a-b of block indices") from None
        if not (0 <= a <= b < num_blocks):
            raise PolicyError(f"delta: blocks={text} is outside the model's blocks 0-{num_blocks - 1}")
        return a, b

    def plan(self, planner) -> Plan:
        a, b = self.block_range(len(planner.blocks))
        return planner.range_reuse(a, b, f"delta_b{a}_{b}")
