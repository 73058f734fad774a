"""What the token-wise methods share (ToCa ``toca:N,R`` and DuCa ``duca:N,R``): parameters,
the schedule and ratio rules, token selection, and the plan of gather/scatter variants.

A step is one of three actions:

* ``F`` full — every region is computed on all tokens and its output cached;
* ``P`` partial (ToCa's step, DuCa's *conservative* step) — token-wise regions (MLPs,
  cross-attention; self-attention with ``attn=sdpa``) compute a selected subset of their tokens
  and scatter it into their caches; the other regions reuse their caches;
* ``R`` reuse (DuCa's *aggressive* step) — every attention/MLP region reuses its cache (the
  module-level reuse of FORA: adaLN, gates and the residual stream still run on the current step).

``R`` (the policy key) is, as in the papers, the fraction of tokens **cached** in a partial step:
``R=0.9`` computes 10 %. A region's fresh ratio is ``r = clamp((1 − R)·f_step·f_layer·f_module, 0, 1)``
with docs/methods.md's factors (``factors=``), and it computes ``k = floor(r·N)`` of its ``N`` tokens.

Schedules (``schedule=``):

* ``toca`` (DiT code of ToCa and DuCa) — with ``s = T−1−step`` counting down, a step is full when
  ``s % N_eff == 0`` (and step 0 is full), ``N_eff = round(N / (1.4 − 0.8·s/T))``, forced to 2 for
  ``s ∈ [0.2T, 0.4T)``. Needs the trajectory length; without it the interval schedule is used.
* ``interval`` (FORA, FLUX) — full every N steps.

DuCa's cached steps alternate: with ``p`` the position in the cycle (``s % N_eff`` for the toca
schedule, steps since the last full step for the interval one), odd ``p`` is conservative (partial)
and even ``p`` aggressive (reuse), as in DuCa's DiT code. ``cycle=conservative`` / ``aggressive``
make every cached step one kind (the ablation of DuCa's Table VI).

Selection rules, all on the device of the step's tensors:

* ``random`` — ``k`` distinct positions per sample, uniformly (DuCa), from a generator seeded by
  ``seed=`` per trajectory (reproducible);
* ``knorm`` / ``vnorm`` / ``attn`` — the score the last full step stored
  (:mod:`cachec.passes.attention_scores`) plus ``stale · (steps since refresh) / N`` plus, with
  ``grid=g``, ``bonus · max(score)`` for the best token of each ``g×g`` cell; the top ``k`` win.

FLOPs of a partial step are counted per region from its ``k``: ``fixed + per_token · k`` (from the
graph's shapes, see :func:`cachec.flops.flops_in_tokens`), so NFE is honest.

Choices where the sources leave room (documented and tested):

* DuCa's aggressive step reuses every *module* (as FORA); the DuCa DiT code instead skips the
  whole block stack. With module reuse, ``R=1`` is exactly FORA on the same modules.
* ToCa's attention factor ``f_attn = 0`` means "self-attention reused"; with ``attn=sdpa`` the
  self-attention is computed for the selected queries and gets factor 1.
* ``factors=auto`` takes ToCa's DiT factors for DiT, its PixArt factors for PixArt, and no factors
  (``uniform``: every token-wise region computes exactly ``1 − R``) for other classes.
* ``select=knorm`` is the default of ``toca`` because it keeps flash attention; ToCa's own rule is
  ``select=attn`` (needs the attention map, see :mod:`cachec.passes.attention_scores`). DuCa
  selects at random (``select=random``, seeded by ``seed=``).

Plan: every token-wise region is replaced by its *token variant*
(:mod:`cachec.passes.gather_scatter`) in every variant that runs it, including the full one,
where the controller hands it all ``N`` token positions. One graph per region thus serves both
kinds of step, so weights stay owned by a single segment. Variants ``full`` (token regions run
on all tokens, other regions run and store, the selection scores are tapped and stored),
``partial`` (token regions on ``k ≤ N`` positions, other regions load) and ``reuse`` (every
region loads). The program's ``planned.tokens`` lists, per token region, its index value, token
count, block, kind, score cache and its FLOPs as ``fixed + per_token·k``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from cachec.passes import GatherScatter, ScoreError, TapTokenScore, TokenwiseError

from ..errors import ModelError, PolicyError
from ..flops import flops_in_tokens, graph_flops, propagate
from ..planner.plan import Plan, per_segment
from ..program import Load, Op, Run, Store, cache_name
from .base import Action, Controller, Method, Params, choice, param

SELECT_RULES = ("random", "knorm", "vnorm", "attn")
ATTN_MODES = ("reuse", "sdpa")
FACTOR_SETS = ("auto", "uniform", "dit", "pixart")
SCHEDULES = ("toca", "interval")
CYCLES = ("alternate", "conservative", "aggressive")
INDEX_PREFIX = "tokens__"
log = logging.getLogger("cachec")


# ---------------------------------------------------------------------------------------------
# parameters and rules


@dataclass(frozen=True)
class TokenParams(Params):
    N: int = param(3, "cycle length: one full step, then N-1 cached steps (see schedule=)", 1, 1000)
    R: float = param(0.93, "fraction of tokens CACHED in a partial step (0.9 computes 10 %)", 0.0, 1.0)
    attn: str = param("reuse", "self-attention in a partial step: reuse (ToCa/DuCa) | sdpa (selected queries, all keys)")
    select: str = param("knorm", "token rule: random | knorm | vnorm (key/value norm at the last full step) | attn "
                                 "(ToCa's attention score; materialises the attention map, no flash attention)")
    seed: int = param(0, "seed of select=random (reproducible per trajectory)", 0)
    stale: float = param(0.25, "score bonus per step since a token's refresh, over N (ToCa s3); not for random", 0.0, 100.0)
    grid: int = param(0, "ToCa s4: in each grid×grid cell the top token gets bonus·max (0: off)", 0, 64)
    bonus: float = param(0.6, "ToCa s4 bonus", 0.0, 100.0)
    factors: str = param("auto", "ratio factors: auto | uniform | dit | pixart (docs/methods.md)")
    schedule: str = param("toca", "toca (N_eff, DiT code) | interval (full every N)")


def n_eff(N: int, s: int, T: int) -> int:
    """ToCa's effective interval at countdown step ``s`` of ``T`` (DiT code)."""
    if 0.2 * T <= s < 0.4 * T:
        return 2
    return max(1, round(N / (1 + 0.4 - 0.8 * s / T)))


def ratio_factors(factor_set: str, model_class: str, kind: str, layer: int, layers: int, step: int, T: int | None,
                  attn_mode: str) -> float:
    """``f_step · f_layer · f_module`` of docs/methods.md for one region (1 for ``uniform``)."""
    if factor_set == "auto":
        factor_set = {"DiTTransformer2DModel": "dit", "PixArtTransformer2DModel": "pixart"}.get(model_class, "uniform")
    if factor_set == "uniform":
        return 1.0
    s = (T - 1 - step) if T else 0
    x = s / T if T else 0.0
    lx = layer / (layers - 1) if layers > 1 else 0.0
    if factor_set == "dit":
        f_step, f_layer = 3 - 4 * x, 0.8 + 0.4 * lx
        f_module = {"mlp": 2.5, "cross_attn": 1.0}.get(kind, 1.0 if attn_mode == "sdpa" else 0.0)
    else:  # pixart
        f_step, f_layer = 1.9 - 1.8 * x, 1.6 - 1.2 * lx
        f_module = {"mlp": 1.6, "cross_attn": 0.6}.get(kind, 1.0 if attn_mode == "sdpa" else 0.0)
    return f_step * f_layer * f_module


# ---------------------------------------------------------------------------------------------
# selection


class TokenState:
    """Per-trajectory selection state, owned by the controller: the random generator (seeded by
    ``seed=``) and, per region, the number of steps since each token was last computed."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)
        self.stale: dict[str, torch.Tensor] = {}


def select(p, state: TokenState, region: dict, k: int, caches: dict, batch: int, device) -> torch.Tensor:
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


# ---------------------------------------------------------------------------------------------
# controller


class TokenController(Controller):
    """Decides each step's action (``F``, ``P`` or ``R``) and each region's fresh tokens."""

    def __init__(self, policy, num_steps):
        super().__init__(policy, num_steps)
        self.interval = policy.params.schedule == "interval" or not num_steps
        if policy.params.schedule == "toca" and not num_steps:
            log.info("%s: the trajectory length is unknown, so the schedule is full every N steps "
                     "(schedule=toca needs num_steps)", policy.name)
        self.tokens = TokenState(policy.params.seed)

    def _position(self, step: int) -> int:
        """Position of ``step`` in its cycle (0 = a full step by the schedule)."""
        N, T = self.policy.params.N, self.num_steps
        if self.interval:
            return step - self.last_full if step - self.last_full < N else 0
        s = T - 1 - step
        return s % n_eff(N, s, T)

    def rule(self, step, signal):
        return self._position(step) == 0

    def action(self, step: int) -> str:
        """The step's letter: F (full), P (partial) or R (reuse)."""
        if self.decide(step):
            return "F"
        cycle = self.policy.params.get("cycle", "conservative")
        if cycle == "alternate":
            return "P" if self._position(step) % 2 == 1 else "R"
        return "P" if cycle == "conservative" else "R"

    def fresh_count(self, region: dict, step: int, model_class: str, layers: int) -> int:
        p = self.policy.params
        f = ratio_factors(p.factors, model_class, region["kind"], region["block"], layers, step, self.num_steps, p.attn)
        r = min(1.0, max(0.0, (1.0 - p.R) * f))
        return int(math.floor(r * region["tokens"] + 1e-9))

    def actions(self, step, ctx):
        info = ctx.planned.tokens
        regions, state, batch, device = info["regions"], self.tokens, ctx.batch, ctx.device
        letter = self.action(step)
        if letter == "F":
            inputs = {}
            for r in regions:
                inputs[r["index"]] = torch.arange(r["tokens"], device=device).expand(batch, -1)
                state.stale[r["index"]] = torch.zeros(batch, r["tokens"], device=device)
            yield Action("full", "F", inputs)
            return
        ks = {}
        if letter == "P":
            ks = {r["index"]: self.fresh_count(r, step, ctx.model.model_class, info["layers"])
                  for r in regions}
        if letter == "R" or not any(ks.values()):  # nothing fresh: exactly the reuse variant, at its cost
            for r in regions:
                state.stale[r["index"]] += 1
            yield Action("reuse", "R")
            return
        inputs = {r["index"]: select(self.policy.params, state, r, ks[r["index"]], ctx.caches, batch, device)
                  for r in regions}
        # the variant counted every region at N tokens; count the k it ran
        delta = sum(r["token_flops"] * (ks[r["index"]] - r["tokens"]) for r in regions)
        yield Action("partial", "P", inputs, flops_delta=delta)


# ---------------------------------------------------------------------------------------------
# the method


class TokenMethod(Method):
    """Base of ToCa and DuCa: their plan, plan key and backend needs."""

    granularity = "token"
    main = "N"
    positional = ("N", "R")
    controller_cls = TokenController
    variants = ("full", "partial", "reuse")
    needs = frozenset({"token_variants"})

    def validate(self):
        p = self.params
        choice(self.name, "select", p.select, SELECT_RULES)
        choice(self.name, "attn", p.attn, ATTN_MODES)
        choice(self.name, "factors", p.factors, FACTOR_SETS)
        choice(self.name, "schedule", p.schedule, SCHEDULES)
        if "cycle" in p:
            choice(self.name, "cycle", p["cycle"], CYCLES)

    def plan_key(self, num_blocks: int) -> tuple:
        # the variants depend on which regions are token-wise and which score the full variant taps
        return (self.name, self.params.attn, "random" if self.params.select == "random" else self.params.select)

    def unsupported(self, backend: str, capable: list[str]) -> str:
        """Why ``backend`` cannot run this policy. ``select=attn`` is named on its own: it
        materialises attention maps, which the fused attention kernels of ONNX Runtime / TensorRT
        engines never expose."""
        if self.params.select == "attn":
            return (f"{self.name}: select=attn needs a materialised attention map (ToCa's attention score), which "
                    f"the {backend} backend cannot provide; use select=knorm, vnorm or random, or --backend "
                    f"{' or '.join(capable)}")
        return (f"{self.name}: partial (gather/scatter) variants change their token count every step, which the "
                f"{backend} backend does not lower yet; use --backend {' or '.join(capable)}")

    def plan(self, planner) -> Plan:
        return plan_tokens(planner, self)


def _is_token_region(kind: str, attn_mode: str) -> bool:
    return kind in ("mlp", "cross_attn") or (kind == "attn" and attn_mode == "sdpa")


def _example(plan: Plan, names: list[str]) -> dict[str, torch.Tensor]:
    return {n: plan.examples[n] for n in names}


def plan_tokens(planner, policy) -> Plan:
    """The full/partial/reuse variants of ``policy`` and its ``planned.tokens``."""
    attn_mode, rule = policy.params.attn, policy.params.select
    plan = planner.new_plan()
    ex = plan.examples
    by_seg = planner.region_by_segment()
    variants: dict[str, str] = {}  # region segment -> its token variant segment
    regions: list[dict] = []
    for seg_name, region in by_seg.items():
        if not _is_token_region(region.kind, attn_mode):
            continue
        seg = planner.segments[seg_name]
        outs = seg.outputs
        n = int(ex[outs[0]].shape[1])
        caches = {o: cache_name(seg_name, str(k)) for k, o in enumerate(outs)}
        for o, c in caches.items():
            ex[c] = ex[o]
        index = INDEX_PREFIX + seg_name
        val = ex[outs[0]]
        ex[index] = val.new_empty((val.shape[0], n), dtype=torch.int64)
        try:
            token_seg = planner.rewritten(plan, seg_name, [GatherScatter(n, index, caches)], f"{seg_name}__tokens")
        except TokenwiseError as exc:
            raise ModelError(
                f"{policy.name}: region {region.name} ({region.kind}) cannot be computed on a subset of its tokens: "
                f"{exc}. Token-wise policies support DiT/PixArt-style MLP and attention regions"
                + ("; try attn=reuse" if region.kind == "attn" else "")
            ) from None
        fixed, per_token = flops_in_tokens(token_seg.module, _example(plan, [*seg.inputs, *caches.values()]), index, n)
        token_seg.flops = fixed + per_token * n
        variants[seg_name] = token_seg.name
        regions.append({"segment": token_seg.name, "region": region.name, "kind": region.kind, "block": region.block,
                        "index": index, "tokens": n, "outputs": outs, "caches": list(caches.values()),
                        "fixed_flops": fixed, "token_flops": per_token, "score": None})
    if not regions:
        raise ModelError(f"{policy.name}: {planner.captured.model_class} has no MLP or attention region to compute token-wise")
    scores = _tap_scores(planner, plan, policy, rule, by_seg, variants, regions) if rule != "random" else {}

    def rewrite(op: Run) -> dict[str, list[Op]] | None:
        if op.segment not in by_seg:
            return None
        outs = [o for o in plan.base[op.segment].outputs if not o.startswith("score__")]
        stores, loads = planner.cache_ops(plan, op.segment, outs)
        score = [Store(*scores[op.segment])] if op.segment in scores else []
        if op.segment in variants:
            run = [Load(s.cache, s.cache) for s in stores] + [Run(variants[op.segment])] + stores
            return {"full": run + score, "partial": run, "reuse": loads}
        return {"full": [op, *stores, *score], "partial": loads, "reuse": loads}

    plan.variants = per_segment(plan.variants["full"], ["full", "partial", "reuse"], rewrite)
    plan.meta["tokens"] = {"regions": regions, "layers": len(planner.blocks)}
    return plan


def _tap_scores(planner, plan: Plan, policy, rule, by_seg, variants, regions) -> dict[str, tuple[str, str]]:
    """Add the rule's score output to each needed self-attention segment: segment -> (value, cache)."""
    attn_of_block = {r.block: seg for seg, r in by_seg.items() if r.kind == "attn"}
    taps: dict[str, tuple[str, str]] = {}
    for entry in regions:
        seg_name = attn_of_block.get(entry["block"])
        if seg_name is None:
            raise PolicyError(f"{policy.name}: select={rule} scores tokens by block {entry['block']}'s self-attention, "
                              "which this model does not have; use select=random")
        value, cache = f"score__{seg_name}", cache_name("score", seg_name)
        if seg_name not in taps:
            try:
                seg = planner.rewritten(plan, variants.get(seg_name, seg_name), [TapTokenScore(rule, value)])
            except ScoreError as exc:
                raise PolicyError(f"{policy.name}: select={rule} on {by_seg[seg_name].name}: {exc}") from None
            if rule == "attn":  # the materialised attention map costs FLOPs: recount from the shapes
                _recount(plan, seg, regions)
            taps[seg_name] = (value, cache)
            ref = plan.examples[seg.outputs[0]]
            plan.examples[value] = plan.examples[cache] = ref.new_empty(tuple(ref.shape[:2]))
        if plan.examples[taps[seg_name][0]].shape[1] != entry["tokens"]:
            raise PolicyError(f"{policy.name}: select={rule}: block {entry['block']}'s self-attention has another "
                              f"token count than {entry['region']}; use select=random")
        entry["score"] = taps[seg_name][1]
    return taps


def _recount(plan: Plan, seg, regions: list[dict]) -> None:
    """FLOPs of a rewritten attention segment, from its new shapes (per token for a token variant)."""
    entry = next((e for e in regions if e["segment"] == seg.name), None)
    example = _example(plan, seg.inputs)
    if entry is not None:
        fixed, per = flops_in_tokens(seg.module, example, entry["index"], entry["tokens"])
        entry["fixed_flops"], entry["token_flops"] = fixed, per
        seg.flops = fixed + per * entry["tokens"]
    else:
        propagate(seg.module, example)
        seg.flops = graph_flops(seg.module, 1)
