"""Hook-based reference of per-block adaptive caching (``blockcache``); shares no code with cachec.

Written from the definition (Block Caching's relative change, AdaCache's rate, Foresight's warm-up
thresholds), on the original diffusers model with forward hooks, for transformer models whose
blocks return their streams (``reference_hooks.in_streams`` / ``out_streams``):

* the **outputs** of block i are its streams that a later module reads: every stream, except that
  the last block's text stream (``txt``), which nothing after it reads, is left out;
* a block that runs records ``Δ_i[k] = out[k] − in[k]`` for each of its outputs ``k`` and, from
  its second run on, ``c_i = Σ_k Σ|Δ_old[k] − Δ_new[k]| / Σ_k Σ|Δ_new[k]|`` and the rate
  ``r_i = c_i / (s − a_i)`` (``a_i``: its previous run); a rate measured at a step ``< warmup`` is
  also kept for ``scale=warmup``;
* ``metric=mse`` (and ``foresight``) measures ``c_i = mean_k mean((Δ_old[k] − Δ_new[k])²)``
  instead (float64 here);
* at step ``s`` block i is **recomputed** iff ``s == 0`` or ``s < warmup`` or ``s >= T − final``,
  or it has no rate yet, or ``s − a_i >= N``, or ``not ((s − a_i)·r_i < τ_i)``, with ``τ_i = t``
  (``scale=absolute``) or ``t · mean(warm-up rates of i)`` (``scale=warmup``) or
  ``t · (w[-1] + 0.1·w[-2] + 0.01·w[-3])``, ``w`` the warm-up rates of i in step order
  (``scale=foresight``; ``foresight:t,...`` is ``metric=mse,scale=foresight``); otherwise it is
  **reused**: its outputs are ``in[k] + Δ_i[k]`` (the full forward still runs underneath; only the
  numbers matter here).
"""

from __future__ import annotations

import torch
from reference_hooks import HookOwner, block_list, in_streams, out_streams, with_streams


def parse(spec: str) -> dict:
    name, _, args = spec.partition(":")
    assert name in ("blockcache", "foresight"), spec
    p = {"t": 0.2, "N": 6, "scale": "absolute", "metric": "l1rel", "warmup": 0, "final": 0}
    if name == "foresight":
        p.update(t=1.0, N=4, warmup=4, scale="foresight", metric="mse")
    for part in (a for a in args.split(",") if a):
        key, _, value = part.rpartition("=")
        key = key or "t"  # the bare value is t
        p[key] = type(p[key])(value)
    return p


class BlockCacheReference(HookOwner):
    def __init__(self, model: torch.nn.Module, spec: str, num_steps: int):
        self.model, self.p, self.T = model, parse(spec), num_steps
        self.blocks = block_list(model)
        self.handles = []
        for i, block in enumerate(self.blocks):
            self.handles.append(block.register_forward_pre_hook(self._pre(i), with_kwargs=True))
            self.handles.append(block.register_forward_hook(self._post(i)))
        self.reset()

    def reset(self) -> None:
        L = len(self.blocks)
        self.step = 0
        self.last = [-1] * L
        self.rate: list[float | None] = [None] * L
        self.warm: list[list[float]] = [[] for _ in range(L)]
        self.delta: list[dict | None] = [None] * L
        self.block_schedules = [""] * L
        self.inputs: dict = {}
        self.full: list[bool] = []

    def recompute(self, s: int, i: int) -> bool:
        p = self.p
        if s == 0 or s < p["warmup"] or s >= self.T - p["final"] or self.rate[i] is None:
            return True
        if s - self.last[i] >= p["N"]:
            return True
        w = self.warm[i]
        if p["scale"] == "absolute":
            tau = p["t"]
        elif p["scale"] == "foresight":
            tau = p["t"] * (w[-1] + 0.1 * w[-2] + 0.01 * w[-3])
        else:
            tau = p["t"] * sum(w) / len(w)
        return not ((s - self.last[i]) * self.rate[i] < tau)

    def _outputs(self, i: int, out) -> dict:
        streams = out_streams(out)
        if i == len(self.blocks) - 1:
            streams = {"img": streams["img"]}
        return streams

    def _pre(self, i):
        def hook(module, args, kwargs):
            self.inputs[i] = {k: v.clone() for k, v in in_streams(module, args, kwargs).items()}
        return hook

    def _post(self, i):
        def hook(module, args, out):
            s, inp, outs = self.step, self.inputs[i], self._outputs(i, out)
            if self.full[i]:
                new = {k: outs[k] - inp[k] for k in outs}
                if self.last[i] >= 0:
                    old = self.delta[i]
                    if self.p["metric"] == "mse":
                        change = sum(float(((old[k].double() - new[k].double()) ** 2).mean()) for k in new) / len(new)
                    else:
                        num = sum(float((old[k] - new[k]).abs().sum()) for k in new)
                        den = sum(float(new[k].abs().sum()) for k in new)
                        change = num / den
                    self.rate[i] = change / (s - self.last[i])
                    if s < self.p["warmup"]:
                        self.warm[i].append(self.rate[i])
                self.delta[i], self.last[i] = new, s
                return None
            return with_streams(out, {**out_streams(out), **{k: inp[k] + d for k, d in self.delta[i].items()}})
        return hook

    @torch.no_grad()
    def __call__(self, **kwargs) -> torch.Tensor:
        if self.step >= self.T:
            self.reset()
        self.full = [self.recompute(self.step, i) for i in range(len(self.blocks))]
        for i, f in enumerate(self.full):
            self.block_schedules[i] += "F" if f else "R"
        out = self.model(**kwargs, return_dict=False)[0]
        self.step += 1
        return out
