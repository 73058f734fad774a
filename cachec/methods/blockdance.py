"""``blockdance:N,start=0.4,depth=0.75`` — BlockDance (Zhang et al., CVPR 2025): late in denoising
the shallow and middle blocks' features barely change (structure first, detail later) while the
deep blocks' keep evolving; so after an early stage of full steps, the shallow and middle blocks
are skipped on all but every N-th step and the deep blocks run on their cached output.

The rule (cachec's reading; docs/methods.md says why):

* the reused range is blocks ``0 .. k−1`` with ``k = floor(depth·L)`` (L blocks), the deep blocks
  ``k .. L−1`` always run;
* a step is full when it is forced (step 0, warmup, final), when it lies in the early stage
  (``s < start·T``), or when ``s − a ≥ N`` (``a``: the last full step); otherwise it is a reuse step;
* a full step stores the outputs of block ``k−1`` (every stream a later block reads); a reuse
  step skips blocks ``0 .. k−1`` and feeds the deep blocks the stored outputs
  (``reuse=feature``, BlockDance's reuse of the features themselves), or their input plus the
  stored residual ``out − in`` of the range (``reuse=delta``, which is Δ-DiT's front-block
  caching; ``start=0`` then makes it ``delta:N,blocks=0-(k−1)`` exactly).

``N=1`` is ``none``. BlockDance-Ada's decision network is trained, and out of scope.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ModelError, PolicyError
from ..planner.plan import Plan, insert_after, replace
from . import register
from .base import Controller, Method, Params, choice, param

REUSE = ("feature", "delta")


@dataclass(frozen=True)
class BlockDanceParams(Params):
    N: int = param(2, "interval in the late stage: one full step, then N-1 steps that reuse the shallow blocks", 1, 1000)
    start: float = param(0.4, "late stage: steps s >= start*T may reuse (earlier steps are all full)", 0.0, 1.0)
    depth: float = param(0.75, "share of the blocks reused: blocks 0..floor(depth*L)-1 (the deep rest always runs)",
                         0.0, 1.0)
    reuse: str = param("feature", "feature (the deep blocks read the stored output of the range) or delta (its input "
                                  "plus the stored residual, Δ-DiT's front-block caching)")


class BlockDanceController(Controller):
    """Full in the early stage; in the late stage one full step every N (FORA's interval)."""

    def __init__(self, policy, num_steps):
        super().__init__(policy, num_steps)
        if num_steps is None and policy.params.start > 0:
            raise PolicyError(f"{policy.spec}: the late stage s >= start*T needs the trajectory length (num_steps); "
                              "pass it, or use start=0")

    def rule(self, step, signal):
        p = self.policy.params
        if p.start > 0 and step < p.start * self.num_steps:
            return True
        return step - self.last_full >= p.N


@register
class BlockDanceMethod(Method):
    name = "blockdance"
    doc = ("BlockDance: after the early stage (s >= start*T), the shallow and middle blocks (share depth) are "
           "skipped on all but every N-th step and the deep blocks run on their cached features")
    granularity = "block"
    main = "N"
    Params = BlockDanceParams
    controller_cls = BlockDanceController

    def validate(self) -> None:
        choice(self.name, "reuse", self.params.reuse, REUSE)
        if self.params.start >= 1:
            raise PolicyError(f"{self.spec}: start={self.params.start} leaves no late-stage step to reuse; "
                              "accepted: 0 <= start < 1")

    def plan_key(self, num_blocks: int) -> tuple:
        return (self.name, self.params.reuse, self.reused_blocks(num_blocks))

    def reused_blocks(self, num_blocks: int) -> int:
        """k: blocks 0..k-1 are reused, at least one and never the last."""
        k = math.floor(self.params.depth * num_blocks)
        if not 1 <= k < num_blocks:
            raise PolicyError(f"{self.spec}: depth={self.params.depth} reuses {k} of the model's {num_blocks} blocks; "
                              f"it must reuse at least 1 and leave the last to run (depth in "
                              f"[{1 / num_blocks:.3g}, {(num_blocks - 1) / num_blocks:.3g}] here)")
        return k

    def plan(self, planner) -> Plan:
        k = self.reused_blocks(len(planner.blocks))
        tag = f"blockdance_b0_{k - 1}"
        if self.params.reuse == "delta":
            return planner.range_reuse(0, k - 1, tag)
        plan = planner.new_plan()
        segs = planner.range_segments(0, k - 1)
        if not segs:
            raise ModelError(f"blockdance: blocks 0..{k - 1} have no segments of their own")
        _, outputs = planner.range_io(segs)
        stores, loads = planner.cache_ops(plan, tag, outputs)
        full = plan.variants["full"]
        plan.variants = {"full": insert_after(full, segs[-1], stores), "reuse": replace(full, segs, loads)}
        return plan
