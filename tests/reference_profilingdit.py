"""Hook-based reference of ProfilingDiT (``profilingdit``); shares no code with cachec.

Written from the definition in docs/methods.md, on the original diffusers model with forward hooks:

* the background set B is ``bg`` (ranges ``a-b`` or blocks ``a`` joined by ``/``; default: every
  block but the first and last), taken as maximal runs of consecutive blocks;
* the interval at step ``s`` of ``T`` is eq. 61, ``Tmax − (Tmax − Tmin)·(s − s0)/(S − s0)`` with
  ``s0 = warmup`` and ``S = T − 1``;
* step ``s`` is **full** iff ``s == 0`` or ``s < warmup`` or ``s >= T − final`` or ``s − a >= T_s``
  (``a``: the last full step); a full step records, per background run ``i..j`` and stream,
  ``out(block j) − in(block i)``;
* a reuse step replaces block ``j``'s streams by ``in(block i, current) + recorded delta``: the full
  forward still runs underneath; only the numbers matter here.
"""

from __future__ import annotations

import torch
from reference_hooks import StepRuleReference, block_list, in_streams, out_streams, with_streams


def parse(spec: str) -> dict:
    name, _, args = spec.partition(":")
    assert name == "profilingdit", spec
    p = {"Tmax": 4, "Tmin": 2, "bg": "", "warmup": 0, "final": 0}
    bare = ["Tmax", "Tmin"]
    for part in (a for a in args.split(",") if a):
        key, _, value = part.rpartition("=")
        key = key or bare.pop(0)
        p[key] = type(p[key])(value)
    return p


def background_runs(bg: str, num_blocks: int) -> list[tuple[int, int]]:
    if not bg:
        return [(1, num_blocks - 2)]
    members = set()
    for part in bg.split("/"):
        lo, _, hi = part.partition("-")
        members.update(range(int(lo), int(hi or lo) + 1))
    runs: list[list[int]] = []
    for i in sorted(members):
        if runs and runs[-1][1] + 1 == i:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return [tuple(r) for r in runs]


class ProfilingDiTReference(StepRuleReference):
    def __init__(self, model: torch.nn.Module, spec: str, num_steps: int):
        self.p, self.T = parse(spec), num_steps
        blocks = block_list(model)
        self.runs = background_runs(self.p["bg"], len(blocks))
        self.model = model
        self.handles = []
        for r, (i, j) in enumerate(self.runs):
            self.handles.append(blocks[i].register_forward_pre_hook(self._run_in(r), with_kwargs=True))
            self.handles.append(blocks[j].register_forward_hook(self._run_out(r)))
        self.reset()

    def reset(self) -> None:
        self.step, self.last_full, self.schedule = 0, None, ""
        self.base: dict = {}
        self.delta: dict = {}

    def interval(self, s: int) -> float:
        p = self.p
        s0, S = p["warmup"], self.T - 1
        if S <= s0:
            return float(p["Tmin"])
        return p["Tmax"] - (p["Tmax"] - p["Tmin"]) * (s - s0) / (S - s0)

    def is_full(self, s: int) -> bool:
        p = self.p
        if s == 0 or s < p["warmup"] or s >= self.T - p["final"]:
            return True
        return s - self.last_full >= self.interval(s)

    def _run_in(self, r: int):
        def hook(module, args, kwargs):
            self.base[r] = {k: v.clone() for k, v in in_streams(module, args, kwargs).items()}
        return hook

    def _run_out(self, r: int):
        def hook(module, args, out):
            if self.full:
                self.delta[r] = {k: v - self.base[r][k] for k, v in out_streams(out).items()}
                return None
            return with_streams(out, {k: self.base[r][k] + d for k, d in self.delta[r].items()})
        return hook
