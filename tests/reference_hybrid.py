"""Hook-based references for hybrid policies ``DECISION+FORECASTER`` (a decision's reused steps forecast).

Independent of the ``cachec`` package (it shares no code with it). The decisions are those of the
existing hook references — ``dbcache`` / ``magcache`` / ``budget:base=step`` (an F/R mask) from
``reference_predictive.py``, ``teacache`` from ``reference_hooks.py`` — with one change: where
they store the residual of the cached blocks at a full step and add it back at a cached step, a
hybrid folds it into a per-stream forecaster at the full step and adds the forecast back.

``taylorseer`` is cache-dit's TaylorSeer calibrator (``cache_dit/caching/cache_contexts/
calibrators/taylorseer.py``, cache-dit 1.5.3), restated in :class:`CacheDitTaylorSeer` from its
definition — which is what DBCache uses for the middle blocks' residual ``Bn`` (and ``Bn_encoder``
for the text stream) when ``enable_calibrator`` is set with ``calibrator_cache_type="residual"``.
``hicache`` and ``foca`` are the per-stream forecasters of ``reference_predictive.py``.
"""

from __future__ import annotations

import math

import torch
from reference_hooks import HookedReference, out_streams, with_streams
from reference_predictive import AdamsBashforthStream, FoCaStream, HermiteStream, PredictiveReference


class CacheDitTaylorSeer:
    """One stream of cache-dit's ``TaylorSeerState`` (``n_derivatives = O``), as DBCache drives it.

    * The step counter ``c``: the state is created by the first full step's ``update`` with
      ``c = −1`` and each later step's ``mark_step_begin`` adds one, so on a pipeline's first
      call ``c = s − 1`` at step ``s``.
    * ``update(Y)`` (a full step): ``dY_current[0] = Y``; for ``i < O``, if the previous ladder has
      ``dY[i]`` *and* ``c > 1``, ``dY[i+1] = (dY[i] − dY_prev[i]) / window`` with
      ``window = c − c_last`` (the real distance to the previous full step), else stop. Then
      ``c_last = c``.
    * ``approximate()`` (a cached step): ``Σ_i dY[i] · elapsed^i / i!`` over the present orders,
      ``elapsed = c − c_last``.
    """

    def __init__(self, order: int):
        self.order = order
        self.prev: list[torch.Tensor | None] = [None] * (order + 1)
        self.cur: list[torch.Tensor | None] = [None] * (order + 1)
        self.last_c = -1

    def update(self, Y: torch.Tensor, s: int) -> None:
        c = s - 1
        self.prev = self.cur
        new: list[torch.Tensor | None] = [None] * (self.order + 1)
        new[0] = Y.clone()
        window = c - self.last_c
        for i in range(self.order):
            if self.prev[i] is not None and c > 1:
                new[i + 1] = (new[i] - self.prev[i]) / window
            else:
                break
        self.cur, self.last_c = new, c

    def predict(self, s: int) -> torch.Tensor:
        elapsed = (s - 1) - self.last_c
        out = 0
        for i, d in enumerate(self.cur):
            if d is None:
                break
            out = out + d * (elapsed**i) / math.factorial(i)
        return out


def parse_forecaster(spec: str):
    """``taylorseer:O=1`` / ``hicache:O=1,sigma=0.8`` / ``foca`` / ``abcache:k=3`` -> a factory of per-stream forecasters."""
    name, _, args = spec.partition(":")
    p = {"O": 2, "sigma": 0.5, "k": 2}
    for item in (a for a in args.split(",") if a.strip()):
        key, _, value = item.partition("=")
        p[key.strip()] = type(p[key.strip()])(value)
    if name == "taylorseer":
        return lambda: CacheDitTaylorSeer(p["O"])
    if name == "hicache":
        return lambda: HermiteStream(p["O"], p["sigma"])
    if name == "abcache":
        return lambda: AdamsBashforthStream(p["k"])
    assert name == "foca", spec
    return FoCaStream


class HybridPredictive(PredictiveReference):
    """``dbcache`` / ``magcache`` / ``budget:base=step`` (a mask) / ``easycache`` whose reused residuals are forecast.

    DBCache: at a full step each residual stream ``R_mid = output(block L−B−1) − output(block F−1)``
    is folded into its forecaster; a cached step replaces that output by ``output(block F−1) + R̂``.
    MagCache and the mask: the same on the whole stack's residual ``output(last) − input(block 0)``.
    """

    def __init__(self, model, spec: str, num_steps: int, **kw):
        decision, forecaster = spec.split("+")
        super().__init__(model, decision, num_steps, **kw)
        self.new_stream = parse_forecaster(forecaster)

    def _db_mid(self, module, args, out):
        base, outs = self.cur["probe"], out_streams(out)
        new = {k: base[k] + self._fold(("mid", k), outs[k] - base[k]) for k in outs if k in base}
        return None if self.full else with_streams(out, dict(outs, **new))


    def _easycache_output(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """EasyCache: a full step folds ``Δ = v − x`` into the forecaster; a cached step returns ``x + Δ̂``."""
        if not self.full:
            return x + self._fold(("delta", 0), None)
        out = super()._easycache_output(x, v)
        self._fold(("delta", 0), v - x)
        return out


class HybridTeaCache(HookedReference):
    """``teacache`` (identity rescale) whose reused stack residual (img stream) is forecast."""

    def __init__(self, model, spec: str, num_steps: int):
        decision, forecaster = spec.split("+")
        assert decision.startswith("teacache"), spec
        super().__init__(model, decision, num_steps)
        self.new_stream = parse_forecaster(forecaster)

    def reset(self) -> None:
        super().reset()
        self.forecaster = None

    def _stack_out(self, module, args, out):
        img = out_streams(out)["img"]
        if self.full:
            if self.forecaster is None:
                self.forecaster = self.new_stream()
            self.forecaster.update(img - self.cur["in0"], self.step)
            return None
        return with_streams(out, dict(out_streams(out), img=self.cur["in0"] + self.forecaster.predict(self.step)))
