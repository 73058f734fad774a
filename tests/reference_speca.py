"""Hook reference for SpeCa (``speca:N,O,checks,tau0,decay,tau_min``), independent of ``cachec``.

Written from docs/methods.md (cachec's reading of SpeCa's released code). Steps ``s = 0..T−1``;
``f`` the last full step; the draft is TaylorSeer of order O on every attention / feed-forward
output (``TaylorStream``, ``streams=module``).

* Full iff ``forced(s)`` (s == 0, s < warmup, s >= T − final), or the previous step rejected its
  draft, or ``s − f ≥ N``. A full step folds every unit's value into its Taylor state.
* Otherwise every unit's output is its forecast, except on a *verified* step (``s − f > checks``)
  the units of the last transformer block, which are computed (on the forecast input) and kept;
  their error ``e = mean over those streams of mean(|ŷ − y| / (|y| + 1e−10))`` (ŷ forecast, y
  computed) is the step's signal, and ``e > τ(s) = max(tau_min, tau0·decay^(s/T))`` rejects the
  draft: the next step is full.
"""

from __future__ import annotations

import torch
from reference_hooks import block_list, cached_units
from reference_predictive import PredictiveReference


class SpecaReference(PredictiveReference):
    def __init__(self, model, spec: str, num_steps: int):
        super().__init__(model, spec, num_steps)
        last = block_list(model)[-1]
        inside = {id(m) for m in last.modules()}
        self.checked = {id(u) for u in cached_units(model) if id(u) in inside}
        assert self.checked, "the last block has no attention / feed-forward unit"

    def reset(self) -> None:
        super().reset()
        self.rejected = False
        self.verifying = False
        self.errors: list[float] = []

    def tau(self, s: int) -> float:
        p = self.p
        return max(p["tau_min"], p["tau0"] * p["decay"] ** (s / self.T))

    @torch.no_grad()
    def __call__(self, **kwargs) -> torch.Tensor:
        if self.step >= self.T:
            self.reset()
        s, p = self.step, self.p
        self.cur, self.errors, self.signal = {}, [], None
        full = self.forced(s) or self.rejected or s - self.last_full >= p["N"]
        self._decide(full)
        self.verifying = not full and s - self.last_full > p["checks"]
        if full:
            self.rejected = False
        out = self.model(**dict(kwargs, return_dict=False))[0]
        if self.verifying:
            self.signal = sum(self.errors) / len(self.errors)
            self.compared.append(self.signal)
            self.rejected = self.signal > self.tau(s)
        self.schedule += "F" if full else "R"
        self.signals.append(self.signal)
        self.step += 1
        return out

    def _unit_hook(self, module, args, out):
        if self.full or not (self.verifying and id(module) in self.checked):
            return super()._unit_hook(module, args, out)
        outs = out if isinstance(out, tuple) else (out,)
        for i, y in enumerate(outs):
            if y is not None:
                guess = self.streams[(module, i)].predict(self.step)
                self.errors.append(float(((guess - y).abs() / (y.abs() + 1e-10)).mean()))
        return None  # the verified units keep their computed values
