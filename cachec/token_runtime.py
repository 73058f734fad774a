"""One step of a token-wise policy (ToCa, DuCa) at run time: pick the path, select the tokens.

The controller (:class:`~cachec.token_policy.TokenController`) decides the step's action; for a
partial step this module computes each token region's fresh-token count ``k`` and its token
positions ``[B, k]`` and hands them to the partial path as values; a full step hands every region
all ``N`` positions. Per trajectory and branch, the state lives on the controller: the random
generator (seeded by ``seed=``, so a trajectory is reproducible and seeds differ) and, per region,
the number of steps since each token was last computed (ToCa's staleness term).

Selection rules, all on the device of the step's tensors:

* ``random`` — ``k`` distinct positions per sample, uniformly (DuCa);
* ``knorm`` / ``vnorm`` / ``attn`` — the score the last full step stored
  (:mod:`cachec.passes.attention_scores`) plus ``stale · (steps since refresh) / N`` plus, with
  ``grid=g``, ``bonus · max(score)`` for the best token of each ``g×g`` cell; the top ``k`` win.

FLOPs of a partial step are counted per region from its ``k``: ``fixed + per_token · k`` (from the
graph's shapes, see :func:`cachec.passes.gather_scatter.flops_in_tokens`), so NFE is honest.
"""

from __future__ import annotations

import math

import torch

from .errors import PolicyError


class TokenState:
    """Per-trajectory selection state, kept on the branch's controller."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)
        self.stale: dict[str, torch.Tensor] = {}


def _state(ctl) -> TokenState:
    if getattr(ctl, "tokens", None) is None:
        ctl.tokens = TokenState(ctl.policy.params["seed"])
    return ctl.tokens


def run_token_step(rt, env: dict, branch, batch: int, step: int) -> tuple[str, float]:
    """Run one step of a token policy on ``rt``; returns (schedule letter, per-sample FLOPs)."""
    program, ctl = rt.program, branch.controller
    info = program.meta["tokens"]
    regions = info["regions"]
    state = _state(ctl)
    action = ctl.action(step)
    ref = env[program.inputs[0]]
    device = ref.device
    if action == "F":
        for r in regions:
            env[r["index"]] = torch.arange(r["tokens"], device=device).expand(batch, -1)
            state.stale[r["index"]] = torch.zeros(batch, r["tokens"], device=device)
        return "F", rt.variants["full"](env, branch.caches)
    if action == "R":
        for r in regions:
            state.stale[r["index"]] += 1
        return "R", rt.variants["reuse"](env, branch.caches)
    ks = {r["index"]: ctl.fresh_count(r, step, program.meta.get("model_class", ""), info["layers"]) for r in regions}
    if not any(ks.values()):  # nothing fresh: exactly the reuse path, at its cost
        for r in regions:
            state.stale[r["index"]] += 1
        return "R", rt.variants["reuse"](env, branch.caches)
    for r in regions:
        env[r["index"]] = select(ctl.policy.params, state, r, ks[r["index"]], branch.caches, batch, device)
    flops = rt.variants["partial"](env, branch.caches)
    for r in regions:  # the path counted every region at N tokens; count the k it ran
        flops += r["fixed_flops"] + r["token_flops"] * ks[r["index"]] - (r["fixed_flops"] + r["token_flops"] * r["tokens"])
    return "P", flops


def select(p: dict, state: TokenState, region: dict, k: int, caches: dict, batch: int, device) -> torch.Tensor:
    """Token positions ``int64 [batch, k]`` (ascending) for one region, and update its staleness."""
    n, key = region["tokens"], region["index"]
    stale = state.stale[key]
    if p["select"] == "random":
        score = torch.rand(batch, n, generator=state.generator).to(device)
    else:
        cache = caches.get(region["score"])
        if cache is None:
            raise PolicyError(f"select={p['select']}: no score was stored for {region['region']} (no full step yet)")
        score = cache.to(torch.float32) + p["stale"] * stale / max(n, 1)
        if p["grid"]:
            score = score + grid_bonus(score, p["grid"], p["bonus"])
    idx = torch.topk(score, k, dim=1).indices.sort(dim=1).values
    stale += 1
    stale.scatter_(1, idx, 0.0)
    return idx


def grid_bonus(score: torch.Tensor, g: int, bonus: float) -> torch.Tensor:
    """ToCa's s4: in each ``g×g`` cell of the (square) token grid the top token gets ``bonus·max``."""
    b, n = score.shape
    side = math.isqrt(n)
    if side * side != n or side % g:
        raise PolicyError(f"grid={g} needs a square token grid divisible by {g}; this region has {n} tokens")
    cells = score.view(b, side // g, g, side // g, g).permute(0, 1, 3, 2, 4).reshape(b, -1, g * g)
    best = cells.argmax(-1, keepdim=True)
    add = torch.zeros_like(cells).scatter_(-1, best, 1.0) * bonus * score.amax(1).view(b, 1, 1)
    return add.view(b, side // g, side // g, g, g).permute(0, 1, 3, 2, 4).reshape(b, n)
