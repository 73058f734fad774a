"""Hook-based reference of BlockDance (``blockdance``); shares no code with cachec.

Written from the definition in docs/methods.md, on the original diffusers model with forward hooks:

* ``k = floor(depth·L)`` for L blocks; the reused range is blocks ``0 .. k−1``;
* step ``s`` of ``T`` is **full** iff ``s == 0`` or ``s < warmup`` or ``s >= T − final``, or
  ``s < start·T``, or ``s − a >= N`` (``a``: the last full step); a full step records the streams
  block ``k−1`` returns (``reuse=feature``) or, per stream, ``out(block k−1) − in(block 0)``
  (``reuse=delta``);
* a reuse step replaces block ``k−1``'s streams by the recorded ones (``feature``) or by
  ``in(block 0, current) + recorded delta`` (``delta``): the full forward still runs underneath;
  only the numbers matter here.
"""

from __future__ import annotations

import math

import torch
from reference_hooks import StepRuleReference, block_list, in_streams, out_streams, with_streams


def parse(spec: str) -> dict:
    name, _, args = spec.partition(":")
    assert name == "blockdance", spec
    p = {"N": 2, "start": 0.4, "depth": 0.75, "reuse": "feature", "warmup": 0, "final": 0}
    for part in (a for a in args.split(",") if a):
        key, _, value = part.rpartition("=")
        key = key or "N"
        p[key] = type(p[key])(value)
    return p


class BlockDanceReference(StepRuleReference):
    def __init__(self, model: torch.nn.Module, spec: str, num_steps: int):
        self.p, self.T = parse(spec), num_steps
        blocks = block_list(model)
        self.k = math.floor(self.p["depth"] * len(blocks))
        self.model = model
        self.handles = [blocks[0].register_forward_pre_hook(self._first_in, with_kwargs=True),
                        blocks[self.k - 1].register_forward_hook(self._range_out)]
        self.reset()

    def reset(self) -> None:
        self.step, self.last_full, self.schedule = 0, None, ""
        self.cache: dict = {}

    def is_full(self, s: int) -> bool:
        p = self.p
        if s == 0 or s < p["warmup"] or s >= self.T - p["final"] or s < p["start"] * self.T:
            return True
        return s - self.last_full >= p["N"]

    def _first_in(self, module, args, kwargs):
        self.base = {k: v.clone() for k, v in in_streams(module, args, kwargs).items()}

    def _range_out(self, module, args, out):
        outs = out_streams(out)
        if self.full:
            if self.p["reuse"] == "feature":
                self.cache = {k: v.clone() for k, v in outs.items()}
            else:
                self.cache = {k: v - self.base[k] for k, v in outs.items()}
            return None
        if self.p["reuse"] == "feature":
            return with_streams(out, self.cache)
        return with_streams(out, {k: self.base[k] + d for k, d in self.cache.items()})
