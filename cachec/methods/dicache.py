"""``dicache:t`` — DiCache (Bu et al., 2025, "Let diffusion model determine its own cache"): a
shallow-layer probe decides, an interpolation of cached states fills.

*Decision* (the online probe): the first ``P`` blocks always run and their residual is the probe;
a step is reused while its relative L1 change to the last full step's probe stays below ``t`` —
First-Block Cache's rule (:mod:`cachec.methods.fbcache`), so ``interp=0`` *is* ``fbcache:t``.

*Fill* (dynamic cache trajectory alignment): a reused step does not add the last full step's
deep residual ``R₁`` but extrapolates along the last two, ``R = R₂ + γ·(R₁ − R₂)``, where the
probe says how far: ``γ = clip(mean|p − p₂| / mean|p₁ − p₂|, gmin, gmax)`` with ``p`` the current
probe residual and ``p₁, p₂`` (``R₁, R₂``) those of the last and the second-last full step. Until
two full steps exist the step reuses ``R₁`` as FBCache does. γ is
computed on the device in the reused step's own graph (``tail_align``): no extra host read.

Reading chosen (docs/methods.md): the clip range ``[1, 2]`` and the fallback follow DiCache's
released code as cachec read it (unverified against it here); the decision compares with the last
*full* step (FBCache's reference), where the paper accumulates consecutive changes — so that
``interp=0`` equals ``fbcache`` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ModelError, PolicyError
from ..planner.plan import Plan
from ..planner.segments import example, traced
from ..program import Load, Run, Store, cache_name
from . import register
from .base import Action, Actions, Controller, Method, Params, StepContext, param

TAG, PROBE_TAG, MID_TAG = "dicache", "dc_b0", "dc_tail"
EPS = 1e-12  # floor of γ's denominator: two identical full-step probes give γ = gmax (gmin if p equals them), never NaN


@dataclass(frozen=True)
class DiCacheParams(Params):
    t: float = param(0.08, "threshold on the relative L1 change of the probe's residual to the last full step", 0.0, 10.0)
    P: int = param(1, "probe depth: the first P blocks always run and their residual is the probe", 1, 1000)
    interp: int = param(1, "1: a reused step extrapolates the deep residual of the last two full steps by γ; "
                           "0: it reuses the last one (fbcache)", 0, 1)
    gmin: float = param(1.0, "lower clip of the extrapolation weight γ", 0.0, 10.0)
    gmax: float = param(2.0, "upper clip of the extrapolation weight γ", 0.0, 10.0)


class DiCacheController(Controller):
    """FBCache's decision on the probe; a reused step aligns (``tail_align``) once two full steps exist."""

    def __init__(self, policy, num_steps):
        super().__init__(policy, num_steps)
        self.full_count = 0

    def rule(self, step, signal):
        return not (signal < self.policy.params.t)

    def on_full(self, step):
        self.full_count += 1

    def actions(self, step: int, ctx: StepContext) -> Actions:
        name = ctx.planned.signal
        values = yield Action("head", read=(name,))
        if self.decide(step, values[name]):
            yield Action("tail_full", "F")
        elif self.policy.params.interp and self.full_count >= 2:
            yield Action("tail_align", "R")
        else:
            yield Action("tail_reuse", "R")


def alignment(gmin: float, gmax: float):
    """``(p, p₁, p₂, R₁_0, R₂_0, R₁_1, R₂_1, …) -> (R_0, R_1, …)``: ``R = R₂ + γ·(R₁ − R₂)``, one γ
    from the probe residuals for every stream, its means taken in float32."""
    def fn(p, p1, p2, *deltas):
        num = (p - p2).abs().float().mean()
        den = (p1 - p2).abs().float().mean().clamp_min(EPS)
        gamma = (num / den).clamp(gmin, gmax)
        return tuple(r2 + gamma.to(r2.dtype) * (r1 - r2) for r1, r2 in zip(deltas[::2], deltas[1::2], strict=True))

    return fn


@register
class DiCacheMethod(Method):
    name = "dicache"
    doc = ("DiCache: the first P blocks' residual is the probe (fbcache's rule at t); a reused step extrapolates the "
           "deep residual of the last two full steps by the probe's change ratio γ")
    dynamic = True
    main = "t"
    Params = DiCacheParams
    controller_cls = DiCacheController
    variants = ("full", "head", "tail_full", "tail_reuse", "tail_align")
    rank = 9

    def validate(self):
        p = self.params
        if p.gmin > p.gmax:
            raise PolicyError(f"dicache: gmin={p.gmin} is above gmax={p.gmax}; the clip range of γ needs gmin <= gmax")

    def required_variants(self) -> set[str]:
        return set(self.variants) if self.params.interp else set(self.variants) - {"tail_align"}

    def plan_key(self, num_blocks: int) -> tuple:
        p = self.params
        return (self.name, p.P, p.interp, p.gmin, p.gmax) if p.interp else (self.name, p.P, 0)

    def plan(self, planner) -> Plan:
        L, f0 = len(planner.blocks), planner.first_latent_block()
        if self.params.P > L - f0 - 1:
            raise ModelError(f"{self.spec}: a probe of P={self.params.P} blocks leaves no block to cache among the "
                             f"{L - f0} that read the latent; accepted: P = 1 .. {L - f0 - 1}")
        plan = planner.probe_skip(self.params.P, 0, TAG, PROBE_TAG, MID_TAG)
        if self.params.interp:
            add_alignment(planner, plan, self.params.gmin, self.params.gmax)
        return plan


def add_alignment(planner, plan: Plan, gmin: float, gmax: float) -> None:
    """Keep the second-last full step's probe and deep residuals, and add ``tail_align``.

    ``tail_full`` first copies the caches it is about to overwrite (the probe reference ``p₁`` and
    each residual ``R₁``) into their ``prev`` caches (``p₂``, ``R₂``); ``tail_align`` is ``tail_reuse``
    with the residual loads replaced by the alignment segment's outputs."""
    ex = plan.examples
    reuse = plan.variants["tail_reuse"]
    apply = f"{MID_TAG}_apply"  # the segment range_delta made: base + cached residual
    apply_inputs = set(plan.segment(apply).inputs)
    deltas = [op.cache for op in reuse if isinstance(op, Load) and op.value in apply_inputs]
    if not deltas:
        raise ModelError("dicache: the reused step loads no cached residual to align (a bug in the plan)")
    ref, current = cache_name(TAG, "ref"), f"{TAG}__r1"  # probe_skip's names: the reference, the current probe
    p2 = cache_name(TAG, "ref", "prev")
    shift = [(ref, p2)] + [(c, cache_name(MID_TAG, "prev", str(k))) for k, c in enumerate(deltas)]
    copies = []
    for k, (cache, prev) in enumerate(shift):
        old = f"{TAG}__old{k}"
        ex[old] = ex[prev] = ex[cache]
        copies += [Load(cache, old), Store(old, prev)]
    plan.variants["tail_full"] = copies + plan.variants["tail_full"]

    names = [current, f"{TAG}__p1", f"{TAG}__p2"]
    loads = [Load(ref, names[1]), Load(p2, names[2])]
    ex[names[1]] = ex[names[2]] = ex[ref]
    for k, (cache, prev) in enumerate(shift[1:]):
        r1, r2 = f"{TAG}__last{k}", f"{TAG}__prev{k}"  # lower case: FX snake-cases names
        ex[r1] = ex[r2] = ex[cache]
        names += [r1, r2]
        loads += [Load(cache, r1), Load(prev, r2)]
    gm = traced(alignment(gmin, gmax), [(n, example(ex[n])) for n in names], deltas, "DiCacheAlign")
    align = planner.add_segment(plan, f"{TAG}_align", gm, "cache")
    kept = [op for op in reuse if not (isinstance(op, Load) and op.cache in deltas)]
    i = kept.index(Run(apply))
    plan.variants["tail_align"] = kept[:i] + loads + [Run(align)] + kept[i:]
