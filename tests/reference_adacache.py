"""Hook-based reference of AdaCache (``adacache``); shares no code with cachec.

Written from the definition in docs/methods.md, on the original diffusers model with forward hooks:

* the cached modules are every transformer block's ``attn1`` / ``attn2`` / ``ff`` (FORA's units);
* step ``s`` of ``T`` is **full** iff ``s == 0`` or ``s < warmup`` or ``s >= T − final``, or
  ``s − a >= n`` (``a``: the last full step, ``n``: the current interval, 1 at the start); a full
  step records every cached module's output and the measured block's residual
  ``Δ[k] = out[k] − in[k]`` per stream; from the second full step on it also computes
  ``c = Σ_k Σ|Δ_old[k] − Δ_new[k]| / Σ_k Σ|Δ_new[k]| / (s − a)`` (float64) and sets ``n`` to the
  interval of the first codebook entry whose threshold exceeds ``c``, else 1;
* a reuse step returns the recorded outputs from the cached modules (the full forward still runs
  underneath; only the numbers matter here).
"""

from __future__ import annotations

import torch
from reference_hooks import HookOwner, block_list, in_streams, out_streams

UNITS = ("attn1", "attn2", "ff")


def parse(spec: str) -> dict:
    name, _, args = spec.partition(":")
    assert name == "adacache", spec
    p = {"codebook": "0.03:6/0.05:5/0.07:4/0.09:3/0.11:2", "block": -1, "warmup": 0, "final": 0}
    for part in (a for a in args.split(",") if a):
        key, _, value = part.partition("=")
        p[key] = type(p[key])(value)
    p["codebook"] = [(float(t), int(n)) for t, n in (e.split(":") for e in p["codebook"].split("/"))]
    return p


class AdaCacheReference(HookOwner):
    def __init__(self, model: torch.nn.Module, spec: str, num_steps: int):
        self.p, self.T = parse(spec), num_steps
        blocks = block_list(model)
        b = len(blocks) // 2 if self.p["block"] == -1 else self.p["block"]
        self.model = model
        self.handles = [blocks[b].register_forward_pre_hook(self._block_in, with_kwargs=True),
                        blocks[b].register_forward_hook(self._block_out)]
        for _, mod in model.named_modules():
            if type(mod).__name__ == "BasicTransformerBlock":
                for n in UNITS:
                    if getattr(mod, n, None) is not None:
                        self.handles.append(getattr(mod, n).register_forward_hook(self._unit))
        self.reset()

    def reset(self) -> None:
        self.step, self.last_full, self.interval, self.schedule = 0, None, 1, ""
        self.cache: dict = {}
        self.delta = None
        self.rates: list[float] = []

    def _unit(self, module, args, out):
        if self.full:
            self.cache[module] = out.clone()
            return None
        return self.cache[module]

    def _block_in(self, module, args, kwargs):
        self.block_in = {k: v.clone() for k, v in in_streams(module, args, kwargs).items()}

    def _block_out(self, module, args, out):
        if self.full:
            self.new_delta = {k: v.double() - self.block_in[k].double() for k, v in out_streams(out).items()}

    @torch.no_grad()
    def __call__(self, **kwargs) -> torch.Tensor:
        if self.step >= self.T:
            self.reset()
        s, p = self.step, self.p
        forced = s == 0 or s < p["warmup"] or s >= self.T - p["final"]
        self.full = forced or s - self.last_full >= self.interval
        self.schedule += "F" if self.full else "R"
        out = self.model(**kwargs, return_dict=False)[0]
        if self.full:
            if self.delta is not None:
                num = sum(float((self.delta[k] - d).abs().sum()) for k, d in self.new_delta.items())
                den = sum(float(d.abs().sum()) for d in self.new_delta.values())
                rate = num / den / (s - self.last_full)
                self.rates.append(rate)
                self.interval = next((n for t, n in p["codebook"] if rate < t), 1)
            self.delta, self.last_full = self.new_delta, s
        self.step += 1
        return out
