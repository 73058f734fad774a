"""``deepcache:N,branch=k`` — DeepCache (Ma et al., 2024): in a U-Net the high-level features change
slowly between steps, so a full step caches the deep feature entering skip branch ``k`` of the up
path, and the next N−1 steps compute only the shallow branch (the down path up to skip feature
``k`` and the up layers from there) and concatenate the cached feature.

Branches are numbered as the reference ``DeepCacheSDHelper`` numbers them, shallowest first: branch
``k`` is the up-path concatenation that reads the ``k``-th skip feature (0: ``conv_in``'s output).
On SD-1.5/SDXL (three skip features per down block) that is ``cache_branch_id = 3·cache_block_id +
cache_layer_id``; the paper's default is branch 0. Full steps: ``step % N == 0`` (the reference's
uniform ``interval_seq``), or ``schedule=pow`` — the reference pipeline's non-uniform
``sample_from_quad``: the same number of full steps, denser at the start of the trajectory.
A transformer (DiT) has no skip branches: planning it is an error. The plan (the graph surgery that
finds the branch and the shallow path) is :mod:`cachec.methods.skip_branch`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PolicyError
from ..planner.plan import Plan
from . import register
from .base import Controller, Method, Params, choice, param
from .skip_branch import deep_feature, skip_branch


@dataclass(frozen=True)
class DeepCacheParams(Params):
    N: int = param(3, "cache interval: one full step, then N-1 shallow steps (uniform schedule)", 1, 1000)
    branch: int = param(0, "skip branch whose deep feature is cached, 0 = shallowest (cache_branch_id)", 0, 1000)
    schedule: str = param("uniform", "uniform (full when step % N == 0) | pow (denser early, as many full steps)")
    power: float = param(1.2, "start exponent of the pow schedule (the reference lowers it until the steps differ)", 1.0, 10.0)


def pow_full_steps(num_steps: int, n_full: int, power: float) -> list[int]:
    """The reference pipeline's ``sample_from_quad``: ``n_full`` steps at ``int(x**power)`` for ``x``
    evenly spaced in ``[0, num_steps**(1/power)]`` (the last dropped), ``power`` lowered by 0.02
    until they are distinct."""
    while power > 1:
        top = num_steps ** (1 / power)
        xs = [i * (top / n_full) for i in range(n_full)] + [top]  # numpy.linspace's arithmetic
        steps = sorted({int(x**power) for x in xs})[:-1]
        if len(steps) == n_full:
            return steps
        power -= 0.02
    raise PolicyError(f"deepcache: no pow schedule of {n_full} full steps in {num_steps}; lower N or raise p")


class DeepCacheController(Controller):
    def __init__(self, policy, num_steps):
        super().__init__(policy, num_steps)
        p = policy.params
        self.full_steps = None
        if p.schedule == "pow":
            if num_steps is None:
                raise PolicyError("deepcache: schedule=pow needs the trajectory length (num_steps)")
            self.full_steps = set(pow_full_steps(num_steps, -(-num_steps // p.N), p.power))

    def rule(self, step, signal):
        if self.full_steps is not None:
            return step in self.full_steps
        return step % self.policy.params.N == 0


@register
class DeepCacheMethod(Method):
    name = "deepcache"
    doc = "DeepCache (U-Net): full every N steps caches skip branch k's deep feature; other steps run the shallow path"
    granularity = "block"
    main = "N"
    Params = DeepCacheParams
    controller_cls = DeepCacheController
    rank = 17

    def validate(self) -> None:
        choice(self.name, "schedule", self.params.schedule, ("uniform", "pow"))

    def plan_key(self, num_blocks: int) -> tuple:
        return (self.name, self.params.branch)

    def plan(self, planner) -> Plan:
        return skip_branch(planner, deep_feature(planner, self.params.branch, self.spec),
                           f"deepcache_k{self.params.branch}")
