"""``magcache:t,K`` — MagCache (Ma et al., 2025): the magnitude ratio of successive block-stack
residuals follows a per-model curve; accumulate ``|1 − Π γ|`` over cached steps and reuse the
stack residual while it stays below t, at most K steps in a row. The ratios are published
constants or measured by ``cachec calibrate``; no probe runs at step time."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PolicyError
from ..planner.plan import Plan
from . import register
from .base import Controller, Method, Params, method_constants, param


@dataclass(frozen=True)
class MagCacheParams(Params):
    t: float = param(0.24, "threshold on the accumulated ratio error", 0.0, 100.0)
    K: int = param(5, "most consecutive reused steps", 0, 1000)
    r: float = param(0.1, "retention: the first round(r*T) steps are full", 0.0, 1.0)
    ratios: str = param("", "magnitude ratios: a method_constants.json key (flux.1-dev) or a file from `cachec calibrate`",
                         file=True)


class MagCacheController(Controller):
    def __init__(self, policy, num_steps):
        super().__init__(policy, num_steps)
        if num_steps is None:
            raise PolicyError("magcache resamples its magnitude ratios to the trajectory length, so it needs the "
                              "number of steps (num_steps=..., cachec.reset(model, num_steps), or a pipeline "
                              "that passes num_inference_steps)")
        ratios = policy.data["ratios"]
        n = len(ratios)
        self.gamma = [ratios[round(s * (n - 1) / (num_steps - 1))] if num_steps > 1 else ratios[0]
                      for s in range(num_steps)]
        self.retain = round(policy.params.r * num_steps)
        self.on_full(0)

    def forced(self, step):
        return super().forced(step) or step < self.retain

    def rule(self, step, signal):
        p = self.policy.params
        self.Gamma *= self.gamma[step]
        self.k += 1
        self.err += abs(1.0 - self.Gamma)
        return not (self.err <= p.t and self.k <= p.K)

    def on_full(self, step):
        self.Gamma, self.err, self.k = 1.0, 0.0, 0


@register
class MagCacheMethod(Method):
    name = "magcache"
    doc = "MagCache: accumulate |1 - Π magnitude ratios| of the stack residual; reuse it below t, at most K in a row"
    main = "t"
    needs_data = True
    Params = MagCacheParams
    controller_cls = MagCacheController
    rank = 9

    def validate(self):
        if not self.params.ratios:
            keys = ", ".join(k for k, v in method_constants()["magcache"].items() if "mag_ratios" in v)
            raise PolicyError(f"magcache needs ratios=KEY ({keys}) or ratios=FILE written by `cachec calibrate`")

    def data_source(self) -> str:
        return self.params.ratios

    def load_data(self) -> dict:
        src = self.params.ratios
        published = {k.split(" ")[0]: v for k, v in method_constants()["magcache"].items() if "mag_ratios" in v}
        if src in published:
            return {"ratios": list(published[src]["mag_ratios"])}
        from ..schedules import read_calibration

        return {"ratios": read_calibration(src)["ratios"]}

    def plan(self, planner) -> Plan:
        return planner.range_reuse(0, len(planner.blocks) - 1, "stack")
