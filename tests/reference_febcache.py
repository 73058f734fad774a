"""Hook-based reference of FEB-Cache (``febcache``); shares no code with cachec.

Written from the definition in docs/methods.md, on the original diffusers model with forward hooks:

* the **attention** modules are every transformer block's ``attn1`` / ``attn2`` (self- and
  cross-attention), the **MLP** modules its ``ff``;
* at step ``s`` of ``T`` a type is **computed** iff ``s == 0`` or ``s < warmup`` or
  ``s >= T − final``, or ``s`` is outside its stage (attention: ``s >= attn_from·T``; MLP:
  ``s < mlp_until·T``), or ``s − a >= interval`` (``a``: the step the type last computed;
  interval ``A`` for attention, ``M`` for the MLP); a computed module records its output;
* otherwise every module of the type returns the output it recorded at step ``a`` (the full
  forward still runs underneath; only the numbers matter here).
"""

from __future__ import annotations

import torch
from reference_hooks import HookOwner

TYPES = {"attn": ("attn1", "attn2"), "mlp": ("ff",)}


def parse(spec: str) -> dict:
    name, _, args = spec.partition(":")
    assert name == "febcache", spec
    p = {"A": 3, "M": 3, "attn_from": 0.5, "mlp_until": 0.5, "warmup": 0, "final": 0}
    positional = ["A", "M"]
    for part in (a for a in args.split(",") if a):
        key, eq, value = part.partition("=")
        if not eq:
            key, value = positional.pop(0), part
        p[key] = type(p[key])(value)
    return p


class FEBCacheReference(HookOwner):
    def __init__(self, model: torch.nn.Module, spec: str, num_steps: int):
        self.p, self.T = parse(spec), num_steps
        self.model = model
        self.handles = []
        for _, mod in model.named_modules():
            if type(mod).__name__ != "BasicTransformerBlock":
                continue
            for kind, names in TYPES.items():
                for n in names:
                    if getattr(mod, n, None) is not None:
                        self.handles.append(getattr(mod, n).register_forward_hook(self._hook(kind)))
        self.reset()

    def reset(self) -> None:
        self.step = 0
        self.last = {"attn": -1, "mlp": -1}
        self.cache: dict = {}
        self.schedules = {"attn": "", "mlp": ""}
        self.compute: dict[str, bool] = {}

    def computes(self, kind: str, s: int) -> bool:
        p = self.p
        if s == 0 or s < p["warmup"] or s >= self.T - p["final"]:
            return True
        in_stage = s >= p["attn_from"] * self.T if kind == "attn" else s < p["mlp_until"] * self.T
        interval = p["A"] if kind == "attn" else p["M"]
        return not in_stage or s - self.last[kind] >= interval

    def _hook(self, kind: str):
        def hook(module, args, out):
            if self.compute[kind]:
                self.cache[module] = out.clone()
                return None
            return self.cache[module]
        return hook

    @torch.no_grad()
    def __call__(self, **kwargs) -> torch.Tensor:
        if self.step >= self.T:
            self.reset()
        s = self.step
        self.compute = {k: self.computes(k, s) for k in TYPES}
        for k, c in self.compute.items():
            self.schedules[k] += "F" if c else "R"
            if c:
                self.last[k] = s
        out = self.model(**kwargs, return_dict=False)[0]
        self.step += 1
        return out
