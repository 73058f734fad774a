"""``tgate:G`` — T-GATE (Liu et al., 2024, "Faster diffusion via temporal attention decomposition"):
cross-attention converges in the first steps (semantics planning) and is then frozen: from the gate
step on, every cross-attention output is the one computed at step ``G−1``. Before the gate,
self-attention is computed every ``sa`` steps and reused in between.

The schedule follows the reference ``tgate_scheduler`` (HaozheLiu-ST/T-GATE, ``tgate_utils.py``):

* steps ``< G−1``: cross-attention computed; self-attention computed (and cached) when
  ``step % sa == 0``, reused otherwise (after the warm-up);
* step ``G−1``: everything computed and cached;
* steps ``> G−1``: cross-attention reused; self-attention computed when ``step % sa_after == 0``
  (the reference's ``ca_interval``, default 1: every step), reused otherwise.

The reference's ``warm_up=2`` (steps 0..2 compute self-attention) is the generic ``warmup=3``
here (steps 0..2 full). Its pipelines also drop classifier-free guidance after the gate and cache
the mean of the two CFG halves' cross-attention (``keep_shape=False``): that is a change of the
pipeline's guidance, not of the denoiser, so cachec freezes each sample's own cross-attention
output (the reference processor's ``keep_shape=True`` path); see docs/methods.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..planner.plan import Plan
from . import register
from .base import Action, Controller, Method, Params, param

GROUPS = ("self", "cross")


@dataclass(frozen=True)
class TGateParams(Params):
    G: int = param(10, "gate step: cross-attention computed last at step G-1, reused from step G on", 1, 100000)
    sa: int = param(5, "before the gate, self-attention computed every sa steps (1: every step)", 1, 1000)
    sa_after: int = param(1, "after the gate, self-attention computed every sa_after steps (reference: 1)", 1, 1000)
    warmup: int = param(3, "first K steps always full (the reference's warm_up=2 is K=3)", 0)


def groups_present(regions: list[dict]) -> frozenset[str]:
    """The attention groups this model has: a DiT has no cross-attention, so a step after the gate
    that would reuse only cross-attention computes everything, and is a full step (``F``) — as PAB."""
    kinds = {"attn": "self", "cross_attn": "cross"}
    return frozenset(kinds[r["kind"]] for r in regions if r["kind"] in kinds)


class TGateController(Controller):
    """One decision per step: which of self-/cross-attention this step reuses (maybe none: full)."""

    def reused(self, step: int) -> tuple[str, ...]:
        p = self.policy.params
        gate = p.G - 1
        if step < gate:
            return () if step % p.sa == 0 else ("self",)
        if step == gate:
            return ()
        return ("cross",) if step % p.sa_after == 0 else ("self", "cross")

    def actions(self, step, ctx):
        reuse = () if self.forced(step) else self.reused(step)
        present = groups_present(ctx.planned.regions)
        reuse = tuple(g for g in reuse if g in present)  # reusing an absent group computes everything: F
        if not reuse:
            self.last_full = step
        yield Action("reuse_" + "_".join(reuse) if reuse else "full", "R" if reuse else "F")


@register
class TGateMethod(Method):
    name = "tgate"
    doc = ("T-GATE: cross-attention frozen from gate step G on (output of step G-1 reused); before the gate, "
           "self-attention reused between every sa-th step")
    granularity = "attn, cross_attn"
    main = "G"
    Params = TGateParams
    controller_cls = TGateController
    variants = ("full", "reuse_self", "reuse_cross", "reuse_self_cross")
    rank = 15

    def plan(self, planner) -> Plan:
        kinds = {"self": "attn", "cross": "cross_attn"}
        return planner.group_reuse({g: [r.segment for r in planner.regions if r.kind == kinds[g]] for g in GROUPS})
