"""``vcut:s0`` — VCUT (Taghipour et al., 2024, "Faster Image2Video Generation: A Closer Look at CLIP
Image Embedding's Impact on Spatio-Temporal Cross-Attentions"): in Stable Video Diffusion the
cross-attention reads one pooled CLIP image token, so its output hardly changes along the
trajectory. The first steps (the *semantic binding* stage, steps ``< s0``) compute it; from step
``s0`` on (the *quality refinement* stage) every cross-attention output is the one of step ``s0−1``.

With classifier-free guidance (``cfg=1``, the default) the output cached at step ``s0−1`` is, for
both halves of each ``[uncond; cond]`` pair, their mean ``M = ½(L_cond + L_uncond)`` (survey eq. 25),
so the conditional/unconditional difference vanishes in the cross-attention from ``s0`` on; the
batch must be a batched-CFG call. ``cfg=0`` caches each sample's own output.

Relation to T-GATE (:mod:`cachec.methods.tgate`): ``vcut:s0,cfg=0`` is exactly
``tgate:G=s0,sa=1,warmup=0`` (cross-attention frozen from step ``G = s0``, self-attention never
reused). The CFG mean is the value T-GATE's reference caches with ``keep_shape=False`` (its pipeline
then also drops the unconditional half); ``tgate`` takes neither, and the mean is what VCUT adds. The paper's default is ``s0=1``: cross-attention computed once,
at the first step. The paper also removes SVD's temporal cross-attention outright instead of
caching it; that changes the model rather than caching it, so here the temporal cross-attention is
frozen like the spatial one (docs/methods.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ModelError, PolicyError
from ..planner.plan import Plan
from ..planner.segments import example, traced
from ..program import Run, Store
from . import register
from .base import Action, Controller, Method, Params, param


@dataclass(frozen=True)
class VcutParams(Params):
    s0: int = param(1, "first step of the refinement stage: cross-attention computed at steps < s0, then reused", 1,
                    100000)
    cfg: int = param(1, "1: cache the mean of each [uncond; cond] pair's cross-attention (needs a CFG batch); "
                        "0: each sample's own", 0, 1)


def pair_mean(*outputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Survey eq. 25 on a ``[uncond; cond]`` batch: each output's pair mean, for both halves."""
    means = []
    for x in outputs:
        # halves by narrow, not chunk(2): chunk makes an exporter require an even batch symbol and fix
        # the batch (TensorRT then builds the engine for batch 2 only); the controller refuses odd batches
        half = x.shape[0] // 2
        uncond, cond = x.narrow(0, 0, half), x.narrow(0, half, half)
        m = (cond + uncond) * 0.5
        means.append(torch.cat([m, m], 0))
    return tuple(means)


class VcutController(Controller):
    """Cross-attention computed (``F``) before ``s0``, reused (``R``) from it on; forced steps (warmup,
    final) compute, and a warmup past ``s0`` moves the step whose output is reused to its last step."""

    def actions(self, step, ctx):
        p = self.policy.params
        if p.cfg and ctx.batch % 2:
            raise PolicyError(f"{self.policy.spec}: cfg=1 caches the mean of each [uncond; cond] pair, so it needs a "
                              f"classifier-free-guidance batch of even size; this call has batch {ctx.batch} "
                              "(use cfg=0 without a CFG batch)")
        if self.computes(step):
            self.last_full = step
            # the last step that computes before a reused one fills the cache (a warmup may move it past s0-1)
            yield Action("full_mean" if p.cfg and not self.computes(step + 1) else "full", "F")
        else:
            yield Action("reuse_cross", "R")

    def computes(self, step: int) -> bool:
        return step < self.policy.params.s0 or self.forced(step)


@register
class VcutMethod(Method):
    name = "vcut"
    doc = ("VCUT: cross-attention computed for the first s0 steps, then the output of step s0-1 reused "
           "(cfg=1: the mean of each [uncond; cond] pair)")
    granularity = "cross_attn"
    main = "s0"
    Params = VcutParams
    controller_cls = VcutController

    variants = ("full", "reuse_cross", "full_mean")

    def required_variants(self) -> set[str]:
        return {"full", "reuse_cross", "full_mean"} if self.params.cfg else {"full", "reuse_cross"}

    @property
    def cfg_pairs(self) -> bool:
        return bool(self.params.cfg)

    def plan_key(self, num_blocks: int) -> tuple:
        return (self.name, "cfg") if self.params.cfg else (self.name,)

    def plan(self, planner) -> Plan:
        cross = [r.segment for r in planner.regions if r.kind == "cross_attn"]
        if not cross:
            raise ModelError(f"{self.spec}: {planner.captured.model_class} has no cross-attention, so VCUT has "
                             "nothing to cache; it is for U-Nets and transformers with cross-attention "
                             "(Stable Video Diffusion, SD U-Nets, PixArt). For this model use fora, fbcache or teacache")
        plan = planner.group_reuse({"cross": cross})
        if self.params.cfg:
            plan.variants["full_mean"] = _storing_pair_means(planner, plan)
        return plan


def _storing_pair_means(planner, plan: Plan) -> list:
    """``full`` whose cross-attention caches get the pair means of the outputs instead of the outputs."""
    full = plan.variants["full"]
    cross = {op.value: op.cache for op in full if isinstance(op, Store) and op.cache in
             {load.cache for load in plan.variants["reuse_cross"] if not isinstance(load, Run)}}
    values = list(cross)
    means = [f"{v}__pair_mean" for v in values]
    for v, m in zip(values, means, strict=True):
        plan.examples[m] = plan.examples[v]
    seg = planner.add_segment(plan, "vcut_pair_mean", traced(
        pair_mean, [(v, example(plan.examples[v])) for v in values], means, "VcutPairMean"), "cache")
    kept = [op for op in full if not (isinstance(op, Store) and op.value in cross)]
    return kept + [Run(seg)] + [Store(m, cross[v]) for v, m in zip(values, means, strict=True)]
