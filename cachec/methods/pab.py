"""``pab:S,T,C`` — Pyramid Attention Broadcast (Zhao et al., 2024): inside a timestep window
``lo < t < hi``, each attention type's output is computed every ``range`` steps and *broadcast*
(reused) in between; the ranges form a pyramid (cross-attention changes least, spatial most).

The rule is the reference's, per attention type (videosys ``PABConfig`` / diffusers
``PyramidAttentionBroadcastHook``): compute when ``step == 0``, or ``t`` is outside the open window,
or ``step % range == 0``; otherwise reuse the last computed output. Types: *spatial* is
self-attention, *temporal* self-attention inside a block whose name says ``temporal`` (Latte's
``temporal_transformer_blocks``, diffusers' identifier), *cross* is cross-attention (as capture
detected it). Defaults are videosys' Open-Sora setting (2 / 4 / 6 inside (450, 930)); one window
serves all types (videosys and diffusers allow one per type; they coincide in both defaults).
videosys' MLP broadcast table (Open-Sora only) is not included.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PolicyError
from ..planner.plan import Plan
from . import register
from .base import Action, Controller, Method, Params, param

GROUPS = ("spatial", "temporal", "cross")


@dataclass(frozen=True)
class PABParams(Params):
    S: int = param(2, "spatial (self-)attention computed every S steps inside the window (1: always)", 1, 1000)
    T: int = param(4, "temporal attention computed every T steps inside the window (1: always)", 1, 1000)
    C: int = param(6, "cross-attention computed every C steps inside the window (1: always)", 1, 1000)
    lo: float = param(450.0, "window: broadcast only when lo < timestep < hi")
    hi: float = param(930.0, "window upper end (exclusive)")


class PABController(Controller):
    """Per step: which attention types fall on a broadcast step inside the timestep window."""

    def actions(self, step, ctx):
        p = self.policy.params
        reuse: tuple[str, ...] = ()
        if not self.forced(step):
            t = ctx.timestep() if ctx.timestep is not None else None
            if t is None:
                raise PolicyError(f"{self.policy.spec}: the window lo < t < hi needs the step's timestep, and this "
                                  "model's calls carry none (no 'timestep' input)")
            if p.lo < t < p.hi:
                ranges = {"spatial": p.S, "temporal": p.T, "cross": p.C}
                present = groups_present(ctx.planned.regions)
                reuse = tuple(g for g in GROUPS if g in present and step % ranges[g] != 0)
        if not reuse:
            self.last_full = step
        yield Action("reuse_" + "_".join(reuse) if reuse else "full", "R" if reuse else "F")


def group_of(kind: str, name: str) -> str | None:
    """The attention type a region belongs to (None: not an attention region)."""
    if kind == "cross_attn":
        return "cross"
    if kind == "attn":
        return "temporal" if "temporal" in name else "spatial"
    return None


def groups_present(regions: list[dict]) -> frozenset[str]:
    """The attention types this model has (a DiT has neither temporal nor cross-attention): a step
    that would reuse only absent ones computes everything, and is a full step (``F``)."""
    return frozenset(g for r in regions if (g := group_of(r["kind"], r["name"])) is not None)


def _subsets() -> tuple[str, ...]:
    return tuple("reuse_" + "_".join(g for k, g in enumerate(GROUPS) if m >> k & 1) for m in range(1, 8))


@register
class PABMethod(Method):
    name = "pab"
    doc = ("Pyramid Attention Broadcast: inside lo < t < hi, spatial / temporal / cross-attention outputs computed "
           "every S / T / C steps and broadcast in between")
    granularity = "attn, cross_attn"
    main = "S"
    positional = ("S", "T", "C")
    Params = PABParams
    controller_cls = PABController
    variants = ("full",) + _subsets()
    rank = 16

    def validate(self) -> None:
        if not self.params.lo < self.params.hi:
            raise PolicyError(f"pab: the window needs lo < hi; got lo={self.params.lo}, hi={self.params.hi}")

    def plan(self, planner) -> Plan:
        groups = {g: [] for g in GROUPS}
        for r in planner.regions:
            group = group_of(r.kind, r.name)
            if group is not None:
                groups[group].append(r.segment)
        return planner.group_reuse(groups)
