"""``febcache:A,M`` — FEB-Cache (Zou et al., "Frequency-guided exposure bias reduction for
enhancing diffusion transformer caching"): attention and MLP outputs are cached on separate
schedules, because they carry different frequencies — attention the low-frequency structure, the
MLP the high-frequency detail — and the error a cache adds follows the stage of the trajectory.
Its cache table caches the MLP in the early stage and attention in the late stage.

The rule (cachec's reading of the survey's description; docs/methods.md says why):

* two module types: *attention* (every attention region, self and cross) and *MLP*;
* each type has a stage in which it may be reused — MLP on steps ``s < mlp_until·T``, attention
  on steps ``s >= attn_from·T`` (defaults 0.5 and 0.5: the paper's MLP-early / attention-late
  table) — and an interval (``M`` for the MLP, ``A`` for attention);
* at step ``s`` a type is recomputed when the step is forced (step 0, warmup, final), when ``s``
  is outside the type's stage, or when ``s − a ≥ interval`` (``a``: the step the type last ran);
  otherwise every module of that type returns its output of step ``a`` (FORA's reuse, per type).

``A = M = 1`` is ``none``; ``attn_from=0, mlp_until=1, A = M = N`` is ``fora:N`` (both types
share one schedule then). The paper's dynamic noise scaling (ε → a·ε / b·ε around T0) is a change
of the sampler's prediction, not a cache, and is not included.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PolicyError
from ..planner.plan import Plan
from . import register
from .base import Action, Controller, Method, Params, param

GROUPS = ("attn", "mlp")
KINDS = {"attn": ("attn", "cross_attn"), "mlp": ("mlp",)}


@dataclass(frozen=True)
class FEBCacheParams(Params):
    A: int = param(3, "attention interval inside its stage: computed, then reused A-1 steps (1: always computed)",
                   1, 1000)
    M: int = param(3, "MLP interval inside its stage: computed, then reused M-1 steps (1: always computed)", 1, 1000)
    attn_from: float = param(0.5, "attention may be reused on steps s >= attn_from*T (late stage)", 0.0, 1.0)
    mlp_until: float = param(0.5, "the MLP may be reused on steps s < mlp_until*T (early stage)", 0.0, 1.0)


class FEBCacheController(Controller):
    """Per step: which module types are reused (each with its own stage and interval)."""

    def __init__(self, policy, num_steps):
        super().__init__(policy, num_steps)
        p = policy.params
        if num_steps is None and (0 < p.attn_from < 1 or 0 < p.mlp_until < 1):
            raise PolicyError(f"{policy.spec}: the stages attn_from*T and mlp_until*T need the trajectory length "
                              "(num_steps); pass it, or use stage bounds 0 or 1")
        self.last: dict[str, int] = {}
        self.group_schedules = {g: "" for g in GROUPS}

    def in_stage(self, group: str, step: int) -> bool:
        p, T = self.policy.params, self.num_steps
        if group == "attn":
            return p.attn_from == 0 or (T is not None and step >= p.attn_from * T)
        return p.mlp_until == 1 or (T is not None and step < p.mlp_until * T)

    def reused(self, step: int, present: frozenset[str]) -> tuple[str, ...]:
        if self.forced(step):
            return ()
        p = self.policy.params
        interval = {"attn": p.A, "mlp": p.M}
        return tuple(g for g in GROUPS if g in present and self.in_stage(g, step)
                     and step - self.last[g] < interval[g])

    def actions(self, step, ctx):
        present = frozenset(g for g in GROUPS if any(r["kind"] in KINDS[g] for r in ctx.planned.regions))
        reuse = self.reused(step, present)
        for g in GROUPS:
            if g not in reuse:
                self.last[g] = step
            self.group_schedules[g] += "R" if g in reuse else "F"
        self.last_full = step  # forced() only asks whether a first step happened
        letter = "F" if not reuse else "R" if set(reuse) == present else "P"
        yield Action("reuse_" + "_".join(reuse) if reuse else "full", letter)


@register
class FEBCacheMethod(Method):
    name = "febcache"
    doc = ("FEB-Cache: attention and MLP outputs reused on separate intervals A / M, each in its stage "
           "(MLP early: s < mlp_until*T; attention late: s >= attn_from*T)")
    granularity = "attn, mlp"
    main = "A"
    positional = ("A", "M")
    Params = FEBCacheParams
    controller_cls = FEBCacheController
    variants = ("full", "reuse_attn", "reuse_mlp", "reuse_attn_mlp")

    def plan(self, planner) -> Plan:
        return planner.group_reuse({g: [r.segment for r in planner.regions if r.kind in KINDS[g]] for g in GROUPS})
