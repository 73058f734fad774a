"""``clusca:N,O,K,gamma`` — ClusCa (cluster-driven feature caching): TaylorSeer on every attention/MLP
output, full every N steps; each full step also clusters the last block's output tokens (K-means,
per sample), and on a cached step the MLPs compute one token per cluster exactly, write it into
their ``D_0``, pull every other token of the cluster towards it (``D_0 ← γ·μ + (1−γ)·D_0``, kept
for the next steps) and forecast from that ``D_0``. Attention is forecast as TaylorSeer does.

What comes from the token-wise methods (:mod:`cachec.methods.tokenwise`): the MLP's *token
variant* (:class:`~cachec.passes.GatherScatter`: the region on the selected rows, scattered into a
cache — here its ``D_0`` state), the ``tokens__`` index input the controller hands it, the FLOPs of
a partial step (``fixed + per_token·k``) and the ``planned.tokens`` description. New here: the
K-means and propagation segments (:mod:`cachec.methods.token_clusters`) and the per-cluster
selection. ``fresh=0`` computes no token (an empty index) and ``gamma=0`` moves none: then ClusCa is
``taylorseer:N,O`` exactly (docs/methods.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cachec.passes import GatherScatter, TokenwiseError

from ..errors import ModelError, PolicyError
from ..flops import flops_in_tokens
from ..forecast import PREDICT, Taylor
from ..graph_keys import OUTPUTS_KEY
from ..planner import next_value
from ..planner.plan import Plan, insert_after, per_segment
from ..planner.segments import copy_values, example, traced
from ..program import Load, Run, Store, cache_name
from . import register
from .base import Action, Method, Params, param
from .forecasting import ForecastController
from .token_clusters import kmeans_labels, pick_one_per_cluster, propagate_and_forecast
from .tokenwise import INDEX_PREFIX

LABELS = "clusca__labels"  # the full step's K-means labels, int64 [B, N] ...
LABELS_CACHE = cache_name("clusca", "labels")  # ... kept for the cached steps
GAMMA = "clusca__gamma"  # step input [[γ]]: a run-time parameter, not compiled in
INDEX = INDEX_PREFIX + "clusca"


@dataclass(frozen=True)
class ClusCaParams(Params):
    N: int = param(5, "interval: one full step, then N-1 cached steps", 1, 1000)
    O: int = param(1, "Taylor order of the forecast (0 = reuse)", 0, 4)  # noqa: E741 - the paper's name
    K: int = param(16, "clusters of the last block's output tokens (K-means at each full step)", 1, 4096)
    gamma: float = param(0.005, "propagation: a cluster's tokens move by gamma towards its fresh token", 0.0, 1.0)
    fresh: int = param(1, "tokens per cluster the MLPs compute exactly on a cached step (0: none)", 0, 1)
    iters: int = param(5, "K-means iterations", 1, 100)
    seed: int = param(0, "seed of the per-cluster token draw (reproducible per trajectory)", 0)
    warmup: int = param(2, "first K steps always full", 0)


class ClusCaController(ForecastController):
    """TaylorSeer's interval and coefficients; a cached step draws one token per cluster from the
    labels the last full step stored (a generator seeded by ``seed=`` per trajectory)."""

    def __init__(self, policy, num_steps):
        super().__init__(policy, num_steps)
        self.generator = torch.Generator().manual_seed(policy.params.seed)

    def actions(self, step, ctx):
        full = self.decide(step)
        inputs = dict(self.step_inputs(step, full))
        info = ctx.planned.tokens
        if full:  # the MLPs' token variants on every row
            n = info["regions"][0]["tokens"]
            inputs[INDEX] = torch.arange(n, device=ctx.device).expand(ctx.batch, -1)
            yield Action("full", "F", inputs)
            return
        labels = ctx.caches[info["clusters"]["labels"]]
        if self.policy.params.fresh:
            index = pick_one_per_cluster(labels, info["clusters"]["K"], self.generator)
        else:
            index = labels.new_zeros((labels.shape[0], 0))
        inputs[INDEX] = index
        inputs[GAMMA] = [[self.policy.params.gamma]]
        k = index.shape[1]
        delta = sum(r["token_flops"] * (k - r["tokens"]) for r in info["regions"])  # counted at N tokens
        yield Action("partial", "P", inputs, flops_delta=delta)


@register
class ClusCaMethod(Method):
    name = "clusca"
    doc = ("ClusCa: TaylorSeer plus K-means of the last block's tokens at full steps; cached steps compute one "
           "MLP token per cluster and propagate it (gamma) into the cluster before forecasting; full every N")
    granularity = "attn, mlp (one token per cluster)"
    main = "N"
    Params = ClusCaParams
    controller_cls = ClusCaController
    variants = ("full", "partial")
    needs = frozenset({"token_variants"})
    rank = 15

    def forecast_method(self):
        return Taylor(self.params.O)

    def plan_key(self, num_blocks: int) -> tuple:
        p = self.params
        return (self.name, p.O, p.K, p.iters)

    def unsupported(self, backend: str, capable: list[str]) -> str:
        return (f"clusca: its cached step computes the MLPs on one token per cluster (a gather/scatter variant), "
                f"which the {backend} backend does not lower yet; use --backend {' or '.join(capable)}")

    def plan(self, planner) -> Plan:
        return plan_clusca(planner, self)


def _last_block_tokens(planner) -> str:
    """The last block's output on the latent's residual stream ``[B, N, C]``: what K-means clusters."""
    last = len(planner.blocks) - 1
    inputs, outputs = planner.range_io(planner.range_segments(last, last))
    pairs = planner.pair_streams(inputs, outputs, "clusca")
    main = next((p for p in pairs if p.base is not None and p.base in planner.latent_dependent), None)
    if main is None or len(planner.meta[main.output].shape) != 3:
        raise ModelError(f"clusca: {planner.captured.model_class}'s last block has no token stream [batch, tokens, "
                         "channels] on the latent's residual, so there are no tokens to cluster")
    return main.output


def _same_tokens(value, tokens: int) -> bool:
    """Whether a stream is ``[B, tokens, C]``: the rows the labels of the last block describe."""
    return len(value.shape) == 3 and int(value.shape[1]) == tokens


def _spare_size(*shapes) -> int:
    """An example index length no other dimension has (symbolic tracing would tie equal sizes)."""
    taken = {int(d) for s in shapes for d in s}
    return next(k for k in range(5, 10_000) if k not in taken)


def plan_clusca(planner, policy: ClusCaMethod) -> Plan:
    """TaylorSeer's module forecast; MLP regions forecast through their token variant and the
    propagation segment; the full variant ends the block stack with the K-means."""
    p, method = policy.params, policy.forecast_method()
    plan = planner.new_plan()
    ex = plan.examples
    by_seg = planner.region_by_segment()
    stream = _last_block_tokens(planner)
    n = int(ex[stream].shape[1])
    if p.K > n:
        raise PolicyError(f"clusca: K={p.K} clusters, but the last block has {n} tokens; use K <= {n}")
    labels_cache = LABELS_CACHE
    ex[LABELS] = ex[labels_cache] = ex[stream].new_empty(tuple(ex[stream].shape[:2]), dtype=torch.int64)
    ex[INDEX] = ex[stream].new_empty(tuple(ex[stream].shape[:2]), dtype=torch.int64)
    kmeans = planner.add_segment(plan, "clusca_kmeans", traced(kmeans_labels(p.K, p.iters),
                                 [(stream, example(ex[stream]))], [LABELS], "ClusCaKMeans"), "cache")
    ex[GAMMA] = ex[stream].new_empty((1, 1))
    plan.add_step_input(GAMMA)
    regions: list[dict] = []

    def rewrite(op: Run):
        region = by_seg.get(op.segment)
        if region is None:
            return None
        outputs = planner.segments[op.segment].outputs
        update, forecast = planner.forecast_ops(plan, op.segment, outputs, method)
        if region.kind != "mlp" or not _same_tokens(ex[outputs[0]], n):  # forecast only (FLUX's text-stream MLPs)
            return {"full": [op, *update], "partial": forecast}
        loads = [o for o in forecast if isinstance(o, Load)]
        computed, partial = _mlp_variants(planner, plan, policy, op.segment, region, outputs, loads, regions)
        return {"full": [*loads, *computed, *(o for o in update if not isinstance(o, Load))], "partial": partial}

    plan.variants = per_segment(plan.variants["full"], ["full", "partial"], rewrite)
    if not regions:
        raise ModelError(f"clusca: {planner.captured.model_class} has no MLP region over the {n} tokens of its last "
                         "block, so no token can be computed per cluster")
    last = planner.range_segments(len(planner.blocks) - 1, len(planner.blocks) - 1)[-1]
    plan.variants["full"] = insert_after(plan.variants["full"], last, [Run(kmeans), Store(LABELS, labels_cache)])
    plan.variants["partial"] = [Load(labels_cache, labels_cache)] + plan.variants["partial"]
    plan.meta["tokens"] = {"regions": regions, "layers": len(planner.blocks),
                           "clusters": {"labels": labels_cache, "K": p.K}}
    return plan


def _mlp_variants(planner, plan: Plan, policy: ClusCaMethod, seg_name: str, region, outputs: list[str],
                  loads: list[Load], regions: list[dict]) -> tuple[list, list]:
    """An MLP's ops in both variants, both through its token variant (one graph owns its weights, as
    in :mod:`~cachec.methods.tokenwise`), which scatters the rows it computes into ``D_0`` (outputs
    renamed ``…__fresh``). Full step: every row, copied to the region's outputs. Cached step: one
    row per cluster, then per output the propagation and forecast, and ``D_0`` kept."""
    p, ex = policy.params, plan.examples
    states = Taylor(p.O).state
    n = int(ex[outputs[0]].shape[1])
    d0 = {o: cache_name(seg_name, str(k), "d0") for k, o in enumerate(outputs)}
    try:
        token_seg = planner.rewritten(plan, seg_name, [GatherScatter(n, INDEX, d0)], f"{seg_name}__clusca")
    except TokenwiseError as exc:
        raise ModelError(f"clusca: the MLP {region.name} cannot be computed on a subset of its tokens: {exc}") from None
    fresh = [f"{o}__fresh" for o in outputs]
    token_seg.module.meta[OUTPUTS_KEY] = fresh
    for o, f in zip(outputs, fresh, strict=True):
        ex[f] = ex[o]
    inputs = planner.segments[seg_name].inputs
    fixed, per_token = flops_in_tokens(token_seg.module, {v: ex[v] for v in [*inputs, *d0.values()]}, INDEX, n)
    token_seg.flops = fixed + per_token * n
    regions.append({"segment": token_seg.name, "region": region.name, "kind": region.kind, "block": region.block,
                    "index": INDEX, "tokens": n, "outputs": outputs, "caches": list(d0.values()),
                    "fixed_flops": fixed, "token_flops": per_token, "score": None})
    copy = planner.add_segment(plan, f"{seg_name}_clusca_copy", copy_values(dict(zip(fresh, outputs, strict=True)), ex),
                               "cache")
    ops = [*loads, Run(token_seg.name)]
    for k, (o, f) in enumerate(zip(outputs, fresh, strict=True)):
        higher = [cache_name(seg_name, str(k), f"d{i}") for i in range(1, states)]
        x = example(ex[o])
        spare = _spare_size(x.shape)
        fn = propagate_and_forecast(p.K, states)
        gm = traced(fn, [(PREDICT, torch.zeros(tuple(ex[PREDICT].shape), dtype=ex[PREDICT].dtype)),
                         (GAMMA, torch.zeros((1, 1), dtype=ex[PREDICT].dtype)),
                         (LABELS_CACHE, torch.zeros(x.shape[:2], dtype=torch.int64)),
                         (INDEX, torch.zeros((x.shape[0], spare), dtype=torch.int64)),
                         (f, x), *((h, x) for h in higher)],
                    [o, next_value(d0[o])], "ClusCaPropagate")
        ex[next_value(d0[o])] = ex[o]
        ops += [Run(planner.add_segment(plan, f"{seg_name}_clusca_forecast{k}", gm, "cache")),
                Store(next_value(d0[o]), d0[o])]
    return [Run(token_seg.name), Run(copy)], ops
