"""A hook-based reference of DiCache (``dicache``), written from its definition in docs/methods.md.

Independent of the ``cachec`` package (it shares no code with it). On the live model:

* after block P−1 the probe residual ``p = output(block P−1) − input(block 0)`` (img stream) is
  compared with the last full step's, ``rel = mean|p − p₁| / mean|p₁|``; a step is full when forced
  (step 0, warmup, final) or when ``rel >= t``, and a full step shifts ``p₂ ← p₁, p₁ ← p``;
* after the last block a full step shifts ``R₂ ← R₁, R₁ ← output(last) − output(block P−1)`` per
  residual stream; a reused step replaces the last block's output by ``output(block P−1) + R``,
  with ``R = R₁`` until two full steps exist (or with ``interp=0``), else
  ``R = R₂ + γ·(R₁ − R₂)``, ``γ = clip(mean|p − p₂| / max(mean|p₁ − p₂|, 1e−12), gmin, gmax)``.

The blocks still run on reused steps (their output is replaced): slower, and the simplest hooks.
"""

from __future__ import annotations

import torch
from reference_hooks import HookOwner, block_list, in_streams, out_streams, with_streams

DEFAULTS = {"t": 0.08, "P": 1, "interp": 1, "gmin": 1.0, "gmax": 2.0, "warmup": 0, "final": 0}


def parse(spec: str) -> dict:
    """``dicache:0.1,interp=0`` -> the parameters (the bare value is t)."""
    name, _, args = spec.partition(":")
    assert name == "dicache", spec
    p = dict(DEFAULTS)
    for item in (a.strip() for a in args.split(",") if a.strip()):
        key, eq, value = item.partition("=")
        key, value = (key, value) if eq else ("t", key)
        p[key] = type(DEFAULTS[key])(value)
    return p


class DiCacheReference(HookOwner):
    def __init__(self, model: torch.nn.Module, spec: str, num_steps: int):
        self.model, self.p, self.T = model, parse(spec), num_steps
        blocks = block_list(model)
        self.handles = [blocks[0].register_forward_pre_hook(self._in, with_kwargs=True),
                        blocks[self.p["P"] - 1].register_forward_hook(self._probe),
                        blocks[-1].register_forward_hook(self._out)]
        self.reset()

    def reset(self) -> None:
        self.step, self.schedule = 0, ""
        self.compared: list[float] = []  # every probe value compared with t
        self.gammas: list[float] = []  # γ of every aligned step
        self.p1 = self.p2 = None
        self.R1: dict = {}
        self.R2: dict = {}
        self.n_full = 0

    @property
    def full_steps(self) -> list[int]:
        return [i for i, c in enumerate(self.schedule) if c == "F"]

    @torch.no_grad()
    def __call__(self, **kwargs) -> torch.Tensor:
        if self.step >= self.T:
            self.reset()
        self.full = None
        out = self.model(**dict(kwargs, return_dict=False))[0]
        self.schedule += "F" if self.full else "R"
        self.step += 1
        return out

    def _in(self, module, args, kwargs):
        self.x0 = in_streams(module, args, kwargs)["img"].clone()

    def _probe(self, module, args, out):
        s, p = self.step, self.p
        self.base = {k: v.clone() for k, v in out_streams(out).items()}
        self.probe = self.base["img"] - self.x0
        forced = s == 0 or s < p["warmup"] or s >= self.T - p["final"]
        if not forced:
            rel = float((self.probe - self.p1).abs().mean() / self.p1.abs().mean())
            self.compared.append(rel)
        self.full = forced or not rel < p["t"]
        if self.full:
            self.p2, self.p1 = self.p1, self.probe.clone()
            self.n_full += 1

    def _out(self, module, args, out):
        outs = out_streams(out)
        if self.full:
            self.R2, self.R1 = self.R1, {k: outs[k] - self.base[k] for k in outs if k in self.base}
            return None
        if self.p["interp"] and self.n_full >= 2:
            num = (self.probe - self.p2).abs().mean()
            den = (self.p1 - self.p2).abs().mean().clamp_min(1e-12)
            gamma = float((num / den).clamp(self.p["gmin"], self.p["gmax"]))
            self.gammas.append(gamma)
            R = {k: self.R2[k] + gamma * (self.R1[k] - self.R2[k]) for k in self.R1}
        else:
            R = self.R1
        return with_streams(out, dict(outs, **{k: self.base[k] + d for k, d in R.items()}))
