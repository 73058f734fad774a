"""``omnicache:nfe=K,calib=FILE`` — OmniCache (Chu et al., 2025): a global, trajectory-level schedule.

Instead of deciding step by step from local similarity, OmniCache looks at the whole sampling
trajectory once (a calibration run) and reuses the cache where the trajectory is straight (low
curvature), computing where it bends. cachec's reading (docs/methods.md):

* the curvature of step j is ``κ_j = 1 − cos(v_j, v_{j−1})`` — how far the model output (the
  direction the sampler moves the latent in) turns between two steps of the uncached calibration
  trajectory, per sample, averaged over the calibration samples (``κ_0 = 0``). ``cachec calibrate``
  records it (``curvature`` in the calibration file, :func:`cachec.calibration.curvature`);
* the K full steps are the forced ones (step 0, warmup, final) plus the ``K − forced`` other steps of
  highest curvature (ties: the earlier step) — :func:`curvature_schedule`; every other step reuses;
* reused steps do what ``base=`` says, as for ``budget``: the block-stack residual (``step``, the
  default), FORA's module reuse (``module``) or a TaylorSeer order-1 forecast (``forecast``).

The data kept (in the artifact too, like MagCache's ratios) is the curvature, not a schedule: the
schedule is chosen for the run's own ``nfe``/``warmup``/``final``, so a loaded artifact asked for
another budget still runs that budget's schedule.

Not implemented: OmniCache's noise correction (survey eq. 58, ``q(t−1) ≈ γ_{t−1}·q(t)`` with
stage-dependent low/high-pass filtering of the cache-induced noise ``q``) — the survey defines
neither ``γ_t`` nor the filters, so there is no precise reading to implement.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PolicyError
from ..schedules import forced_steps, read_calibration
from . import register
from .base import param
from .budget import BudgetMethod, BudgetParams


@dataclass(frozen=True)
class OmniCacheParams(BudgetParams):
    nfe: int = param(10, "number of full steps K (forced warmup/final steps included)", 1, 100000)
    base: str = param("step", "what reused steps do: step (stack residual), module (FORA reuse), forecast (TaylorSeer order 1)")
    calib: str = param("", "calibration file from `cachec calibrate` (its curvature of the uncached trajectory)",
                        file=True)


def curvature_schedule(curvature: list[float], nfe: int, *, warmup: int = 0, final: int = 0, spec: str = "omnicache") -> str:
    """The F/R schedule of ``nfe`` full steps: the forced steps, then the others of highest curvature."""
    steps = len(curvature)
    forced = forced_steps(steps, warmup, final)
    if not len(forced) <= nfe <= steps:
        raise PolicyError(f"{spec}: nfe={nfe} full steps does not fit the {steps}-step trajectory with its "
                          f"{len(forced)} forced steps (step 0, warmup, final); accepted: {len(forced)} .. {steps}")
    free = sorted((s for s in range(steps) if s not in forced), key=lambda s: (-curvature[s], s))
    full = forced | set(free[: nfe - len(forced)])
    return "".join("F" if s in full else "R" for s in range(steps))


@register
class OmniCacheMethod(BudgetMethod):
    name = "omnicache"
    doc = ("OmniCache: a global schedule from a calibration trajectory; the nfe=K full steps are the forced ones and "
           "those where the trajectory bends most (curvature), the straight stretches reuse")
    granularity = "step, module (base=)"
    Params = OmniCacheParams
    rank = 12

    @property
    def needs_data(self) -> bool:
        return True  # always: the curvature comes from a calibration file (validate refuses none given)

    def validate(self):
        if self.params.base not in ("step", "module", "forecast"):
            raise PolicyError(f"omnicache: base={self.params.base!r}; accepted: step, module, forecast")
        if not self.params.calib:
            raise PolicyError("omnicache chooses its full steps from a calibration trajectory: give calib=FILE, "
                              "written by `cachec calibrate MODEL --steps T --out FILE`")

    def load_data(self) -> dict:
        calib = read_calibration(self.params.calib)
        if "curvature" not in calib:
            raise PolicyError(f"{self.params.calib} records no trajectory curvature (written by an older cachec); "
                              "calibrate again with `cachec calibrate`")
        return {"curvature": list(calib["curvature"]), "steps": calib["steps"]}

    def schedule_for(self, num_steps: int | None) -> str:
        curvature = self.resolved().data["curvature"]
        if num_steps is not None and num_steps != len(curvature):
            raise PolicyError(f"{self.spec}: the calibration trajectory has {len(curvature)} steps but this one has "
                              f"{num_steps}; calibrate for {num_steps} steps (cachec calibrate --steps {num_steps})")
        p = self.params
        return curvature_schedule(curvature, p.nfe, warmup=p.warmup, final=p.final, spec=self.spec)
