"""``teacache:t`` — TeaCache (Liu et al., 2025): the relative L1 change of block 0's modulated
input, rescaled by a per-model polynomial, is accumulated over cached steps; while the sum stays
below t the residual of the whole block stack is reused, and a full step resets it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..errors import ModelError, PolicyError
from ..planner.plan import Plan, insert_after, replace, split_head
from ..planner.segments import rel_l1_probe
from ..program import Load, Run, Store, cache_name
from . import register
from .base import Controller, Method, ProbeParams, method_constants, param

log = logging.getLogger("cachec")


def teacache_coefficients() -> dict[str, list[float]]:
    return method_constants()["teacache_coefficients"]


@dataclass(frozen=True)
class TeaCacheParams(ProbeParams):
    t: float = param(0.25, "threshold on the accumulated rescaled distance", 0.0, 100.0)
    coeffs: str = param("", "rescale polynomial from method_constants.json (e.g. flux.1-dev); empty: identity")
    final: int = param(1, "last K steps always full", 0)


class TeaCacheController(Controller):
    def __init__(self, policy, num_steps):
        super().__init__(policy, num_steps)
        self.acc = 0.0
        self.poly = policy.polynomial()

    def rule(self, step, signal):
        self.acc += self.poly(signal)
        return not (self.acc < self.policy.params.t)

    def on_full(self, step):
        self.acc = 0.0


@register
class TeaCacheMethod(Method):
    name = "teacache"
    doc = "TeaCache: rescaled relative L1 of block 0's modulated input, accumulated; reuse the stack residual below t"
    dynamic = True
    main = "t"
    Params = TeaCacheParams
    controller_cls = TeaCacheController
    variants = ("full", "head", "tail_full", "tail_reuse")
    rank = 5

    def validate(self):
        name = self.params.coeffs
        if name and name not in teacache_coefficients():
            raise PolicyError(
                f"teacache: unknown coeffs={name!r}; known: {', '.join(sorted(teacache_coefficients()))}"
            )

    def polynomial(self):
        name = self.params.coeffs
        if not name:
            log.info("teacache: no coeffs= given, the rescale polynomial is the identity")
            return lambda x: x
        c = teacache_coefficients()[name]

        def poly(x: float) -> float:
            acc = 0.0
            for a in c:  # highest degree first (numpy.poly1d order)
                acc = acc * x + a
            return acc

        return poly

    def plan(self, planner) -> Plan:
        """Head: the prologue and the first block that reads the latent up to its first attention/MLP
        (blocks before it, of another stream, run whole), then the probe on that region's modulated
        input; tails: the rest, with the stack delta written or applied."""
        b0 = planner.first_latent_block()
        attn = next((r for r in planner.regions if r.block == b0 and r.kind in ("attn", "mlp")), None)
        if attn is None:
            raise ModelError("teacache needs an attention or MLP region in the first block to probe its input")
        seg_attn = planner.region_segment[attn.name]
        first = planner.block_segments[b0]
        ahead = first[: first.index(seg_attn)]
        m = next((i for i in planner.segments[seg_attn].inputs
                  if i in planner.latent_dependent and planner.is_stream(i)), None)
        if m is None or not ahead:
            raise ModelError("teacache: the first block has no modulated input ahead of its first attention")
        plan = planner.new_plan()
        ex = plan.examples
        prev, signal = cache_name("teacache", "prev"), "teacache__signal"
        ex[prev] = ex[m]
        ex["teacache__m"] = ex[m]
        ex[signal] = torch.empty(())
        probe = planner.add_segment(
            plan, "teacache_probe", rel_l1_probe(m, prev, signal, ex, emit_current_as="teacache__m",
                                                batch_dim=planner.item_dim(m)), "probe"
        )
        L = len(planner.blocks)
        write, apply, _ = planner.range_delta(plan, b0, L - 1, "stack")
        full = plan.variants["full"]
        head, tail = split_head(full, ["prologue"] + planner.range_segments(0, b0 - 1) + ahead)
        head += [Load(prev, prev), Run(probe), Store("teacache__m", prev)]
        stack = planner.range_segments(b0, L - 1)
        plan.variants = {"head": head, "tail_full": insert_after(tail, stack[-1], write),
                         "tail_reuse": replace(tail, stack, apply), "full": full}
        plan.signal = signal
        return plan
