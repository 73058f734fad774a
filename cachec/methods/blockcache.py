"""``blockcache:t,N`` — per-block adaptive caching (Block Caching, Wimbauer et al. 2024; the per-layer
thresholds of Foresight, Adnan et al. 2025; the change-rate schedule of AdaCache, Kahatapitiya et al.
2024): every block decides on its own, from its own change, whether to recompute or reuse its
residual delta.

The rule (cachec's reading; docs/methods.md says why):

* a block that runs stores its delta ``Δ_i = out − in`` (every stream of the block) and measures
  Block Caching's relative change against the delta it stored at its previous run,
  ``c_i = Σ‖Δ_i,old − Δ_i,new‖₁ / Σ‖Δ_i,new‖₁`` (sums over the block's streams), which over the
  ``k`` steps since that run gives a change *rate* ``r_i = c_i / k`` (AdaCache);
* at step ``s`` a block last run at step ``a`` is reused when ``(s − a)·r_i < τ_i`` — Block
  Caching's "accumulated change stays below δ", with the accumulation predicted from the last
  measured rate, since a reused block's current output is not there to measure — and is always
  recomputed when ``s − a ≥ N`` (it is refreshed at least every N steps), before it has a rate
  (its first two runs), and on forced steps (step 0, warmup, final);
* ``τ_i = t`` for every block (``scale=absolute``, Block Caching's δ), or ``τ_i = t · w_i`` with
  ``w_i`` the block's mean rate over the warm-up steps (``scale=warmup``), or
  ``τ_i = t · λ_i`` with Foresight's ``λ_i = Σ_{j=0..2} 10^{−j} r_i(W−1−j)``, the rates of the
  last three warm-up steps weighted 1, 0.1, 0.01 (``scale=foresight``, eq. 40 of the survey);
* ``metric=mse`` measures ``c_i`` as Foresight's mean squared change instead,
  ``c_i = mean_k mean((Δ_i,old,k − Δ_i,new,k)²)`` (the mean over the block's streams of each
  stream's MSE). ``foresight:γ`` (:mod:`cachec.methods.foresight`) is ``metric=mse,
  scale=foresight``.

Why the decision uses the rate measured at earlier steps: then the whole step's block mask is
known before the step runs, so the program is a chain of small variants — a prologue, for each
block ``blk{i}_full`` (run it, store its delta and change) or ``blk{i}_reuse`` (``in + Δ``), and an
epilogue — L+2 variants for L blocks, not one per combination of blocks (2^L). A step makes at
most one device→host sync: the vector of the changes of the blocks that ran, read after the
epilogue (none on a step where every block was reused).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from ..errors import ModelError, PolicyError
from ..planner.plan import Plan
from ..planner.segments import computed, graph_module, placeholder
from ..program import Load, Run, Store, cache_name
from . import register
from .base import Action, Controller, Method, Params, choice, param

SIGNALS = "blockcache__signals"
SCALES = ("absolute", "warmup", "foresight")
METRICS = ("l1rel", "mse")
FORESIGHT_WEIGHTS = (1.0, 0.1, 0.01)  # eq. 40: the last warm-up step's change weighs most


@dataclass(frozen=True)
class BlockCacheParams(Params):
    t: float = param(0.2, "threshold on a block's predicted accumulated relative change (scale=warmup: "
                          "a multiple of its warm-up change rate)", 0.0, 100.0)
    N: int = param(6, "refresh interval bound: a block is recomputed at least every N steps", 1, 1000)
    scale: str = param("absolute", "per-block threshold: absolute (t for every block), warmup (t times the "
                                   "block's mean change rate over the warm-up steps) or foresight (t times the "
                                   "rates of the last three warm-up steps weighted 1, 0.1, 0.01)")
    metric: str = param("l1rel", "a block's change: l1rel (relative L1, Block Caching) or mse (mean squared, "
                                 "Foresight)")


class BlockCacheController(Controller):
    """One decision per block and step (see the module docstring); ``block_schedules[i]`` is block
    i's letters (F recomputed, R reused)."""

    def __init__(self, policy, num_steps):
        super().__init__(policy, num_steps)
        self.last: list[int] | None = None  # step of each block's last run
        self.rate: list[float | None] = []
        self.warm: list[list[float]] = []
        self.block_schedules: list[str] = []

    def _start(self, blocks: int) -> None:
        self.last = [-1] * blocks
        self.rate = [None] * blocks
        self.warm = [[] for _ in range(blocks)]
        self.block_schedules = [""] * blocks

    def threshold(self, i: int) -> float:
        t, scale, warm = self.policy.params.t, self.policy.scale, self.warm[i]
        if scale == "absolute":
            return t
        if scale == "foresight":
            return t * sum(w * r for w, r in zip(FORESIGHT_WEIGHTS, reversed(warm), strict=False))
        return t * sum(warm) / len(warm) if warm else 0.0

    def block_full(self, step: int, i: int) -> bool:
        if self.forced(step) or self.rate[i] is None:
            return True
        since = step - self.last[i]
        return since >= self.policy.params.N or not (since * self.rate[i] < self.threshold(i))

    def actions(self, step, ctx):
        blocks = len(ctx.planned.blocks)
        if self.last is None or len(self.last) != blocks:
            self._start(blocks)
        full = [self.block_full(step, i) for i in range(blocks)]
        self.last_full = step  # the step ran (forced() only asks whether a first step happened)
        yield Action("blocks_prologue")
        for i, f in enumerate(full):
            yield Action(f"blk{i}_{'full' if f else 'reuse'}")
            self.block_schedules[i] += "F" if f else "R"
        letter = "F" if all(full) else "R" if not any(full) else "P"
        values = yield Action("blocks_epilogue", letter, read=(SIGNALS,) if any(full) else ())
        for i, f in enumerate(full):
            if not f:
                continue
            if self.last[i] >= 0:  # a second run or later: its change since the previous run is a rate
                self.rate[i] = values[SIGNALS][i] / (step - self.last[i])
                if step < self.policy.params.warmup:
                    self.warm[i].append(self.rate[i])
            self.last[i] = step


@register
class BlockCacheMethod(Method):
    name = "blockcache"
    doc = ("per-block adaptive caching (Block Caching; foresight is one of its settings): each block reuses its delta while its "
           "predicted accumulated change stays below its threshold, refreshed at least every N steps")
    granularity = "block"
    dynamic = True  # decides from measured changes: a batch shares its decisions (`cachec serve` runs it alone)
    main = "t"
    Params = BlockCacheParams
    controller_cls = BlockCacheController
    variants = ("full", "blocks_prologue", "blocks_epilogue")
    rank = 12

    @property
    def scale(self) -> str:
        """How the per-block thresholds are scaled (a parameter here; fixed by :mod:`~cachec.methods.foresight`)."""
        return self.params.scale

    @property
    def metric(self) -> str:
        """How a block's change is measured (a parameter here; fixed by :mod:`~cachec.methods.foresight`)."""
        return self.params.metric

    def validate(self):
        choice(self.name, "scale", self.scale, SCALES)
        choice(self.name, "metric", self.metric, METRICS)
        need = {"warmup": 3, "foresight": 4}.get(self.scale, 0)
        if self.params.warmup < need:
            rates = "the mean of its change rates over" if self.scale == "warmup" else "its last three change rates in"
            raise PolicyError(f"{self.spec}: scale={self.scale} estimates each block's threshold from {rates} the "
                              f"warm-up steps, which needs warmup >= {need} (a rate is known from a block's second run "
                              f"on); got warmup={self.params.warmup}")

    def plan_key(self, num_blocks: int) -> tuple:
        """The change's graph depends on the metric (the default's key is unchanged)."""
        return (self.name,) if self.metric == "l1rel" else (self.name, self.metric)

    def check_program(self, variants, meta: dict, values):
        """Its variants are per block (``blk{i}_full`` / ``blk{i}_reuse``) and it reads the vector of
        block changes, not a probe signal."""
        blocks = len(meta.get("blocks") or ())
        need = set(self.variants) | {f"blk{i}_{v}" for i in range(blocks) for v in ("full", "reuse")}
        missing = sorted(need - set(variants))
        if missing:
            return "variants", f"has no {missing[0]!r} variant, which policy {self.spec} runs"
        if SIGNALS not in (meta.get("feedback") or ()) or SIGNALS not in values:
            return "meta.feedback", f"should name {SIGNALS!r}, the block changes policy {self.spec} reads"
        return None

    def plan(self, planner) -> Plan:
        """The full variant split at the block boundaries: the prologue, two variants per block
        and the epilogue, which also stacks the blocks' changes into one vector for the host."""
        L = len(planner.blocks)
        plan = planner.new_plan()
        ex = plan.examples
        full = plan.variants["full"]
        block_segs = [planner.range_segments(i, i) for i in range(L)]
        inside = {s for segs in block_segs for s in segs}
        runs = [i for i, op in enumerate(full) if isinstance(op, Run) and op.segment in inside]
        if not runs or any(isinstance(op, Run) and op.segment not in inside for op in full[runs[0]:runs[-1] + 1]):
            raise ModelError("blockcache needs the blocks to run back to back between the prologue and the epilogue")
        variants = {"full": full, "blocks_prologue": full[:runs[0]]}
        sig_caches = []
        for i, segs in enumerate(block_segs):
            if not segs:
                raise ModelError(f"blockcache: block {i} ({planner.blocks[i]}) has no segment of its own")
            write, apply, pairs = planner.range_delta(plan, i, i, f"blk{i}")
            old = {p.cache: f"blockcache__old{i}_{k}" for k, p in enumerate(pairs)}
            for cache, value in old.items():
                ex[value] = ex[cache]
            signal, sig_cache = f"blockcache__change{i}", cache_name("blockcache", "change", str(i))
            ex[signal] = ex[sig_cache] = torch.empty(())
            change = _relative_change if self.metric == "l1rel" else _mean_square_change
            probe = planner.add_segment(plan, f"blk{i}_change", change(
                [(old[p.cache], p.output, p.base) for p in pairs], signal, ex), "probe")
            # the change is measured before the write: a backend may write the new delta straight
            # into the cache buffer the old one is read from (ONNX Runtime's bound outputs)
            variants[f"blk{i}_full"] = ([Run(s) for s in segs] + [Load(c, v) for c, v in old.items()]
                                        + [Run(probe)] + write + [Store(signal, sig_cache)])
            variants[f"blk{i}_reuse"] = apply
            sig_caches.append(sig_cache)
        ex[SIGNALS] = torch.empty((L,))
        stack = planner.add_segment(plan, "blockcache_stack", _stack(sig_caches, SIGNALS, ex), "probe")
        variants["blocks_epilogue"] = [Load(c, c) for c in sig_caches] + [Run(stack)] + full[runs[-1] + 1:]
        plan.variants = variants
        plan.feedback = [SIGNALS]  # read on the host after the epilogue (Program.host_reads)
        for i in range(L):
            _move_conditioning_into_block(planner, plan, i)
        # the chained variants hand their values on to the ones after them in the same step
        order = ["blocks_prologue"] + [f"blk{i}" for i in range(L)] + ["blocks_epilogue"]
        later = {}
        for k, name in enumerate(order[:-1]):
            after = [v for n in order[k + 1:] for v in ((f"{n}_full", f"{n}_reuse") if n.startswith("blk") else (n,))]
            for v in ((f"{name}_full", f"{name}_reuse") if name.startswith("blk") else (name,)):
                later[v] = after
        plan.meta["followers"] = later
        return plan


def _move_conditioning_into_block(planner, plan: Plan, i: int) -> None:
    """Move what only block i reads out of the prologue (its hoisted adaLN modulation, its share of
    the timestep embedding) into a segment its full variant runs first: a reused block then costs
    nothing but its residual add, and FLOPs are counted per block."""
    own, block = f"blk{i}_full", planner.range_segments(i, i)
    needed = planner.values_read(plan, list(plan.variants), lambda variant, seg: seg == "prologue" or (
        variant in (own, "full") and seg in block))
    rest = planner.split_base(plan, "prologue", needed, f"prologue_blk{i}")
    if rest is not None:
        plan.variants[own] = [Run(rest)] + plan.variants[own]


def _old_and_new(g: fx.Graph, streams: list[tuple[str, str, str | None]], meta: dict) -> list[tuple]:
    """Per stream of a block: its ``(old, new, example)`` nodes in ``g``, ``new = output − base``
    (the block's delta; the output itself for a raw stream) — what both change metrics compare."""
    seen: dict[str, fx.Node] = {}

    def value(name: str) -> fx.Node:
        if name not in seen:
            seen[name] = placeholder(g, name, meta)
        return seen[name]

    pairs = []
    for old, output, base in streams:
        ex = meta.get(output)
        o, n = value(old), value(output)
        if base is not None:
            n = computed(g, torch.ops.aten.sub.Tensor, (n, value(base)), ex)
        pairs.append((o, n, ex))
    return pairs


def _relative_change(streams: list[tuple[str, str, str | None]], signal: str, meta: dict) -> fx.GraphModule:
    """``Σ_k ‖old_k − new_k‖₁ / Σ_k ‖new_k‖₁`` over a block's streams (Block Caching's L1_rel), with
    ``new_k = output_k − base_k`` (the block's delta; the output itself for a raw stream)."""
    aten = torch.ops.aten
    g = fx.Graph()
    zero = torch.empty(())
    num = den = None
    for o, n, ex in _old_and_new(g, streams, meta):
        d = computed(g, aten.sum.default, (computed(g, aten.abs.default, (computed(g, aten.sub.Tensor, (o, n), ex),), ex),), zero)
        m = computed(g, aten.sum.default, (computed(g, aten.abs.default, (n,), ex),), zero)
        num = d if num is None else computed(g, aten.add.Tensor, (num, d), zero)
        den = m if den is None else computed(g, aten.add.Tensor, (den, m), zero)
    return graph_module(g, [(signal, computed(g, aten.div.Tensor, (num, den), zero))], "BlockChange")


def _mean_square_change(streams: list[tuple[str, str, str | None]], signal: str, meta: dict) -> fx.GraphModule:
    """``mean_k mean((old_k − new_k)²)`` over a block's streams (Foresight's MSE), ``new_k`` as in
    :func:`_relative_change`."""
    aten = torch.ops.aten
    g = fx.Graph()
    zero = torch.empty(())
    total = None
    for o, n, ex in _old_and_new(g, streams, meta):
        d = computed(g, aten.sub.Tensor, (o, n), ex)
        m = computed(g, aten.mean.default, (computed(g, aten.mul.Tensor, (d, d), ex),), zero)
        total = m if total is None else computed(g, aten.add.Tensor, (total, m), zero)
    if len(streams) > 1:
        total = computed(g, aten.div.Scalar, (total, float(len(streams))), zero)
    return graph_module(g, [(signal, total)], "BlockMeanSquareChange")


def _stack(names: list[str], out: str, meta: dict) -> fx.GraphModule:
    """The blocks' 0-d changes as one vector: one host read per step instead of one per block."""
    g = fx.Graph()
    phs = [placeholder(g, n, meta) for n in names]
    return graph_module(g, [(out, computed(g, torch.ops.aten.stack.default, (phs,), meta[out]))], "StackChanges")
