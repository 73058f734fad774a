"""``dbcache:F,B=…,t=…`` — DBCache (cache-dit's dual block cache): the first F blocks always run
and probe, the last B blocks always run, the middle blocks' delta is reused below t, with
warm-up W and limits on cached (M) and consecutive cached (MC) steps."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ModelError
from ..planner.plan import Plan
from . import register
from .base import Controller, Method, ProbeParams, param


@dataclass(frozen=True)
class DBCacheParams(ProbeParams):
    F: int = param(1, "probe blocks computed every step", 1, 1000)
    B: int = param(0, "last blocks computed every step", 0, 1000)
    t: float = param(0.08, "threshold on the relative L1 change of the probe residual", 0.0, 10.0)
    W: int = param(8, "warm-up: no cache hit before step W", 0, 100000)
    M: int = param(-1, "most cached steps in a trajectory (-1: no limit)", -1, 100000)
    MC: int = param(-1, "most consecutive cached steps (-1: no limit)", -1, 100000)


class DBCacheController(Controller):
    def __init__(self, policy, num_steps):
        super().__init__(policy, num_steps)
        self.cached = 0
        self.consecutive = 0

    def rule(self, step, signal):
        p = self.policy.params
        hit = (step >= p.W and signal < p.t
               and (p.M < 0 or self.cached < p.M) and (p.MC < 0 or self.consecutive < p.MC))
        if hit:
            self.cached += 1
            self.consecutive += 1
        return not hit

    def on_full(self, step):
        self.consecutive = 0


@register
class DBCacheMethod(Method):
    name = "dbcache"
    doc = "DBCache (cache-dit): the first F blocks probe, the middle blocks' delta is reused below t, the last B blocks always run"
    dynamic = True
    main = "F"
    Params = DBCacheParams
    controller_cls = DBCacheController
    variants = ("full", "head", "tail_full", "tail_reuse")
    rank = 11

    def plan_key(self, num_blocks: int) -> tuple:
        return (self.name, self.params.F, self.params.B)

    def plan(self, planner) -> Plan:
        p = self.params
        L = len(planner.blocks) - planner.first_latent_block()  # blocks before it are another stream's
        if p.F + p.B >= L:
            raise ModelError(f"dbcache: F={p.F} probe blocks plus B={p.B} tail blocks leave no block of "
                             f"the model's {L} that read the latent to cache; use F + B < {L}")
        return planner.probe_skip(p.F, p.B, "dbcache", "db_probe", "db_mid")
