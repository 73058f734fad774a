"""From a captured graph and a method to a :class:`~cachec.program.Program`.

The planner runs the structural passes once (strip export scaffolding → remove no-ops → hoist
conditioning → assign segments), splits the graph into segments, and from then on is read-only:
it answers questions about the model (blocks, regions, streams, value specs) and offers the
*planning primitives* methods build their :class:`~cachec.planner.plan.Plan` from.
:meth:`Method.plan <cachec.methods.base.Method.plan>` returns that Plan; the planner checks it
and turns it into the Program (:meth:`Planner.program`). The planner knows no method.

Primitives that return a whole plan, one per family of methods:

* :meth:`Planner.module_reuse` (FORA): the reuse variant skips every attention/MLP region segment
  and loads its outputs from caches; the full variant stores them.
* :meth:`Planner.range_reuse` (static, Δ-DiT, budget): a weightless residual-delta segment writes
  ``out − in`` of a block range on full steps and applies ``in + delta`` on cached ones.
* :meth:`Planner.probe_skip` (FBCache, DBCache): a step split into a *head* (up to the probe) and
  two *tails*.
* :meth:`Planner.group_reuse` (PAB, T-GATE): module reuse decided per group of regions (self-,
  cross-, temporal attention), one variant per subset of groups reused.
* :meth:`Planner.forecast` (TaylorSeer, HiCache, FoCa, AB-Cache): state updates on full steps,
  forecasts on cached ones.

Building blocks that add to a plan (a method with a plan of its own composes them):
:meth:`Planner.new_plan`, :meth:`~Planner.add_segment`, :meth:`~Planner.cache_ops` (store after /
load instead), :meth:`~Planner.range_delta`, :meth:`~Planner.forecast_ops`,
:meth:`~Planner.split_base`, :meth:`~Planner.rewritten` (a segment through passes), and the op-list
functions of :mod:`cachec.planner.plan`. The segment factories are in
:mod:`cachec.planner.segments`; fusing and coalescing variants in :mod:`cachec.planner.fuse` and
:mod:`cachec.planner.coalesce`.
"""

from __future__ import annotations

import copy
import re
from collections import ChainMap
from collections.abc import Callable

import torch
from torch import fx

from cachec.graph_keys import COND_KEY
from cachec.passes import (
    AssignSegments,
    DedupeConditioning,
    HoistConditioning,
    PassManager,
    RemoveNoOps,
    StripExportArtifacts,
)
from cachec.passes.infra import PassError, graph_module

from ..capture import Captured
from ..errors import ModelError
from ..flops import graph_flops
from ..forecast import PREDICT, UPDATE, ForecastMethod
from ..program import (
    CACHE_PREFIX,
    Load,
    ModelFacts,
    Op,
    PlanFacts,
    Program,
    Run,
    Segment,
    Store,
    ValueSpec,
    batch_symbol,
    cache_name,
    check_weight_ownership,
    value_spec,
)
from ..regions import ModuleIndex, find_blocks, module_regions
from .coalesce import coalesce
from .plan import Plan, insert_after, per_segment, replace, split_head
from .reuse_check import check_plan_reuses
from .segments import StreamPair, copy_values, delta_apply, delta_write, linear_mix, rel_l1_probe
from .specialize import specialize_segments
from .split import split, split_segment

_STRUCTURAL = {
    torch.ops.aten.add.Tensor, torch.ops.aten.cat.default, torch.ops.aten.slice.Tensor, torch.ops.aten.view.default,
    torch.ops.aten.reshape.default, torch.ops.aten.clone.default, torch.ops.aten.to.dtype,
    torch.ops.aten.contiguous.default, torch.ops.aten.clip.default, torch.ops.aten.clamp.default,
}


class Planner:
    """The segmented base program, questions about it, and the primitives methods build their
    :class:`Plan` with. Read-only once built: a method's choices live in the Plan it returns."""

    def __init__(self, captured: Captured):
        self.captured = captured
        gm = captured.graph_module
        PassManager([StripExportArtifacts(), RemoveNoOps(), HoistConditioning(captured.stream_inputs),
                     DedupeConditioning()])(gm)
        modules = ModuleIndex(gm)  # read once: the questions below each visit only their own nodes
        self.blocks = find_blocks(modules)
        if not self.blocks:
            raise ModelError(
                f"{captured.model_class}: found no repeated blocks (numbered children such as "
                "transformer_blocks.0) in the module hierarchy, so there is nothing to cache"
            )
        self.regions = module_regions(modules, self.blocks, captured.cross_attention)
        region_nodes = {n: r for r in self.regions for n in r.nodes}
        assign = AssignSegments(self.blocks, self.regions, region_nodes)
        try:
            PassManager([assign]).__call__(gm)
        except PassError as exc:  # the model's structure, not a cachec bug: say which construct
            raise ModelError(f"{captured.model_class}: its blocks cannot be cut into cacheable regions ({exc}); "
                             "cachec needs each attention/MLP module to run as one contiguous piece of its block") from exc
        self.gm = gm
        self.order = assign.order
        self.segments = split(gm, self.order, captured.output_name)
        self.order = [s for s in self.order if s in self.segments]
        self.batch = captured.example_batch
        for seg in self.segments.values():
            seg.flops = graph_flops(seg.module, self.batch)
            seg.role = self._role(seg.name)
        self.nodes = {n.name: n for n in gm.graph.nodes}
        self.meta = {n.name: n.meta.get("val") for n in gm.graph.nodes}
        self.meta[captured.output_name] = self.meta[next(n for n in gm.graph.nodes if n.op == "output").args[0][0].name]
        self.bsym = batch_symbol(gm, captured.latent_input)
        self.region_segment = {r.name: r.segment for r in self.regions}
        self.block_segments: list[list[str]] = [[] for _ in self.blocks]  # a block's segments are named b<i>_...
        for s in self.order:
            head = s.split("_", 1)[0]
            if "_" in s and re.fullmatch(r"b\d+", head) and int(head[1:]) < len(self.blocks):
                self.block_segments[int(head[1:])].append(s)
        self.latent_dependent = self._latent_closure()
        total = sum(s.flops for s in self.segments.values())
        for r in self.regions:
            r.flops = self.segments[self.region_segment[r.name]].flops
            r.share = r.flops / total if total else 0.0
        self.delta_forecast: ForecastMethod | None = None  # a hybrid's view: range deltas are forecast, not copied

    # -- structure ------------------------------------------------------------------------------
    def _role(self, name: str) -> str:
        if name in ("prologue", "epilogue"):
            return name
        return "glue" if re.fullmatch(r"b\d+_g\d+", name) else "region"

    def _latent_closure(self) -> set[str]:
        dep = {self.captured.latent_input}
        for n in self.gm.graph.nodes:
            if n.op == "call_function" and any(a.name in dep for a in n.all_input_nodes):
                dep.add(n.name)
        return dep

    def first_latent_block(self) -> int:
        """The first block that reads the latent: where a probe belongs.

        Blocks that run before it serve another stream (Kandinsky 5's text-encoder blocks refine the
        prompt and never see the image); probing them measures how the *text* changes, so
        FBCache/DBCache/TeaCache probe this block instead and always run the ones before it.
        """
        for i, segs in enumerate(self.block_segments):
            if any(o in self.latent_dependent for s in segs for o in self.segments[s].outputs):
                return i
        raise ModelError(f"{self.captured.model_class}: no block reads the latent input "
                         f"{self.captured.latent_input!r}, so there is no block to probe or cache")

    def range_segments(self, a: int, b: int) -> list[str]:
        return [s for i in range(a, b + 1) for s in self.block_segments[i]]

    def range_io(self, segs: list[str]) -> tuple[list[str], list[str]]:
        """Stream values a run of segments reads from before it, and values it makes for after it."""
        inside = set(segs)
        made = {o for s in segs for o in self.segments[s].outputs}
        last = max(self.order.index(s) for s in segs)
        after = [s for s in self.order[last + 1 :] if s not in inside]
        inputs = []
        for s in segs:
            for name in self.segments[s].inputs:
                if name not in made and name not in inputs and self.is_stream(name):
                    inputs.append(name)
        outputs = []
        for s in after:
            for name in self.segments[s].inputs:
                if name in made and name not in outputs:
                    outputs.append(name)
        return inputs, outputs

    def is_stream(self, name: str) -> bool:
        node = self.nodes.get(name)
        if node is None:
            return False
        if node.op == "placeholder":
            return name in self.captured.stream_inputs
        return not node.meta.get(COND_KEY, False)

    def pair_streams(self, inputs: list[str], outputs: list[str], tag: str) -> list[StreamPair]:
        """Pair each range output with the range input it is a residual of.

        Candidates are the inputs of the same shape and dtype. Several candidates (FLUX text and
        image streams of equal length, U-Net skip features) are narrowed to those the output
        reaches through structural ops only (adds, cats, slices, views), then to the one defined
        last — the stream most recently updated before the range. Any choice is an exact
        Δ-cache (``apply`` adds the delta to the same base ``write`` subtracted); this one keeps
        the delta smallest. An output with no candidate is cached raw.
        """
        order = {n: i for i, n in enumerate(self.nodes)}
        pairs = []
        for k, out in enumerate(outputs):
            spec = self.spec(out)
            same = [i for i in inputs if self.spec(i) == spec]
            if len(same) > 1:
                same = [i for i in same if i in self._structural_ancestors(out)] or same
            base = max(same, key=order.__getitem__) if same else None
            pairs.append(StreamPair(out, base, cache_name(tag, str(k))))
        return pairs

    def _structural_ancestors(self, name: str) -> set[str]:
        seen, todo = set(), [self.nodes[name]]
        while todo:
            n = todo.pop()
            if n.name in seen:
                continue
            seen.add(n.name)
            if n.op == "call_function" and (n.target in _STRUCTURAL or n is self.nodes[name]):
                todo.extend(a for a in n.all_input_nodes if a.op != "get_attr")
        return seen

    def item_dim(self, name: str) -> int | None:
        """The batch dimension of value ``name``, or None when it has none (a batch-independent
        value, or a graph captured with a fixed batch): where a probe takes per-item means."""
        spec = self.spec(name)
        return spec.shape.index("B") if spec is not None and "B" in spec.shape else None

    def spec(self, name: str) -> ValueSpec | None:
        node = None if name == self.captured.output_name else self.nodes.get(name)
        return value_spec(node if node is not None else self.meta.get(name), self.bsym)

    def region_by_segment(self) -> dict:
        """Region segment name -> its :class:`~cachec.regions.Region`."""
        return {self.region_segment[r.name]: r for r in self.regions}

    # -- a plan, and the building blocks methods add to it --------------------------------------
    def new_plan(self) -> Plan:
        """The plan every method starts from: the model's own segments, run in order as ``full``."""
        return Plan(variants={"full": [Run(s) for s in self.order]}, base=dict(self.segments), order=list(self.order),
                    examples=ChainMap({}, self.meta))

    def forecasting(self, method: ForecastMethod) -> Planner:
        """A view of this planner whose range deltas are forecast by ``method`` instead of copied
        (a hybrid policy, :mod:`cachec.methods.hybrid`); this planner is unchanged."""
        view = copy.copy(self)
        view.delta_forecast = method
        return view

    def add_segment(self, plan: Plan, name: str, module: fx.GraphModule, role: str) -> str:
        """Add a segment the method built to ``plan`` (its FLOPs counted at the capture's batch)."""
        seg = Segment(name, module, graph_flops(module, self.batch), role)
        plan.added[name] = seg
        out = next(n for n in module.graph.nodes if n.op == "output")
        for value, node in zip(seg.outputs, out.args[0], strict=True):
            if value not in plan.examples and "val" in node.meta:  # a value only this segment makes (a per-item signal)
                plan.examples[value] = node.meta["val"]
        return name

    def rewritten(self, plan: Plan, segment: str, passes: list, name: str | None = None, role: str = "region") -> Segment:
        """Rewrite a segment of ``plan`` with ``passes`` (:mod:`cachec.passes`, linted after each).

        With ``name`` the result is a new segment of that name (the token variant of a region);
        without, it takes the segment's place in the plan. A segment of the model's own is
        rewritten as a copy that shares its weights, so the planner stays as it was."""
        seg = plan.segment(segment)
        module = seg.module if segment in plan.added or name is not None else _graph_copy(seg.module)
        module = PassManager(passes)(module).graph_module
        if name is not None:
            return plan.segment(self.add_segment(plan, name, module, role))
        new = Segment(seg.name, module, seg.flops, seg.role)
        (plan.added if segment in plan.added else plan.base)[segment] = new
        return new

    def cache_ops(self, plan: Plan, segment: str, outputs: list[str]) -> tuple[list[Op], list[Op]]:
        """Store after / load instead: the stores of ``outputs`` of ``segment`` into their caches
        (``cache__SEGMENT__K``), and the loads that stand in for running it."""
        caches = [cache_name(segment, str(k)) for k in range(len(outputs))]
        for o, c in zip(outputs, caches, strict=True):
            plan.examples[c] = plan.examples[o]
        stores = [Store(o, c) for o, c in zip(outputs, caches, strict=True)]
        loads = [Load(c, o) for o, c in zip(outputs, caches, strict=True)]
        return stores, loads

    def split_base(self, plan: Plan, segment: str, needed: set[str], rest_name: str) -> str | None:
        """Cut a segment of the model's own in two (:func:`~cachec.planner.split.split_segment`): the first
        part keeps the name and computes ``needed``, ``rest_name`` the rest, run right after it in
        ``full``. Returns the rest's name, or None when nothing would move."""
        first, rest = split_segment(plan.base[segment], needed, rest_name)
        if rest is None:
            return None
        for seg in (first, rest):
            seg.flops = graph_flops(seg.module, self.batch)
        plan.base[segment], plan.base[rest_name] = first, rest  # rest: still part of the uncached model
        plan.variants["full"] = insert_after(plan.variants["full"], segment, [Run(rest_name)])
        return rest_name

    def values_read(self, plan: Plan, variants: list[str], skip: Callable[[str, str], bool]) -> set[str]:
        """What the output, the host reads and ``variants`` need: inputs of their runs (except those
        ``skip(variant, segment)`` names) and the values they store."""
        needed = {self.captured.output_name, *plan.feedback}
        if plan.signal:
            needed.add(plan.signal)
        for name in variants:
            for op in plan.variants[name]:
                if isinstance(op, Run) and not skip(name, op.segment):
                    needed.update(plan.segment(op.segment).inputs)
                elif isinstance(op, Store):
                    needed.add(op.value)
        return needed

    def range_delta(self, plan: Plan, a: int, b: int, tag: str) -> tuple[list[Op], list[Op], list[StreamPair]]:
        """Ops that write the delta of blocks a..b on full steps, and ops that apply it instead.

        On a :meth:`forecasting` view (a hybrid policy, :mod:`cachec.methods.hybrid`) the full
        step folds the delta into its forecast state and the cached step applies its forecast."""
        segs = self.range_segments(a, b)
        inputs, outputs = self.range_io(segs)
        pairs = self.pair_streams(inputs, outputs, tag)
        if self.delta_forecast is not None:
            return self._forecast_delta(plan, pairs, tag, self.delta_forecast)
        for p in pairs:
            plan.examples[p.cache] = plan.examples[p.output]
        w = self.add_segment(plan, f"{tag}_write", delta_write(pairs, plan.examples), "cache")
        r = self.add_segment(plan, f"{tag}_apply", delta_apply(pairs, plan.examples), "cache")
        write_ops = [Run(w)] + [Store(p.cache, p.cache) for p in pairs]
        apply_ops = [Load(p.cache, p.cache) for p in pairs] + [Run(r)]
        return write_ops, apply_ops, pairs

    def _forecast_delta(self, plan: Plan, pairs: list[StreamPair], tag: str,
                        method: ForecastMethod) -> tuple[list[Op], list[Op], list[StreamPair]]:
        """:meth:`range_delta` of a hybrid: each delta is a plain value (``TAG__rK``), forecast state
        updates after the full step's write, a forecast before the cached step's apply."""
        pairs = [StreamPair(p.output, p.base, f"{tag}__r{k}") for k, p in enumerate(pairs)]
        for p in pairs:
            plan.examples[p.cache] = plan.examples[p.output]
        w = self.add_segment(plan, f"{tag}_write", delta_write(pairs, plan.examples), "cache")
        r = self.add_segment(plan, f"{tag}_apply", delta_apply(pairs, plan.examples), "cache")
        update, forecast = self.forecast_ops(plan, tag, [p.cache for p in pairs], method)
        return [Run(w)] + update, forecast + [Run(r)], pairs

    def forecast_ops(self, plan: Plan, tag: str, streams: list[str],
                     method: ForecastMethod) -> tuple[list[Op], list[Op]]:
        """Ops that fold fresh ``streams`` into their forecast state, and ops that forecast them."""
        if not streams:  # dead-code elimination after every pass leaves no region without outputs
            raise ModelError(f"{self.captured.model_class}: {tag} computes no value the rest of the model reads, "
                             "so there is nothing to forecast")
        ex = plan.examples
        dtype = ex[streams[0]].dtype
        ex[UPDATE] = torch.empty((method.state, 1 + method.state), dtype=dtype)
        ex[PREDICT] = torch.empty((1 + len(method.predict_writes), method.state), dtype=dtype)
        for name in (UPDATE, PREDICT):
            plan.add_step_input(name)
        update_groups, predict_groups, loads, stores_full, stores_reuse = [], [], [], [], []
        for k, value in enumerate(streams):
            state = [cache_name(tag, str(k), s) for s in method.state_names()]
            for c in state:
                ex[c] = ex[next_value(c)] = ex[value]
                loads.append(Load(c, c))
            update_groups.append(([value] + state, [next_value(c) for c in state]))
            stores_full.extend(Store(next_value(c), c) for c in state)
            written = [state[i] for i in method.predict_writes]
            predict_groups.append((state, [value] + [next_value(c) for c in written]))
            stores_reuse.extend(Store(next_value(c), c) for c in written)
        upd = self.add_segment(plan, f"{tag}_fc_update", linear_mix(update_groups, UPDATE, ex), "cache")
        pred = self.add_segment(plan, f"{tag}_fc_predict", linear_mix(predict_groups, PREDICT, ex), "cache")
        return loads + [Run(upd)] + stores_full, loads + [Run(pred)] + stores_reuse

    # -- planning primitives: each returns the plan of a family of methods ---------------------
    def range_reuse(self, a: int, b: int, tag: str) -> Plan:
        """Static, Δ-DiT, MagCache, budget: full stores the delta of blocks a..b; reuse applies it
        instead of running them."""
        plan = self.new_plan()
        write, apply, _ = self.range_delta(plan, a, b, tag)
        segs = self.range_segments(a, b)
        full = plan.variants["full"]
        plan.variants = {"full": insert_after(full, segs[-1], write), "reuse": replace(full, segs, apply)}
        return plan

    def module_reuse(self) -> Plan:
        """FORA: full stores every attention/MLP region's outputs; reuse loads them instead of running it."""
        plan = self.new_plan()
        by_seg = self.region_by_segment()

        def rewrite(op: Run) -> dict[str, list[Op]] | None:
            if op.segment not in by_seg:
                return None
            stores, loads = self.cache_ops(plan, op.segment, self.segments[op.segment].outputs)
            return {"full": [op, *stores], "reuse": loads}

        plan.variants = per_segment(plan.variants["full"], ["full", "reuse"], rewrite)
        return plan

    def group_reuse(self, groups: dict[str, list[str]]) -> Plan:
        """PAB / T-GATE: module reuse decided per *group* of regions (self-, cross-, temporal attention).

        ``groups`` maps a group name to region segment names. Every variant runs the regions of the
        groups it does not reuse and stores their outputs (the next reuse reads the latest computed
        output, as the methods' hooks do); ``full`` runs them all, and ``reuse_<g1>_<g2>…`` (group
        names in the given order) loads the outputs of the groups named instead of running them. A
        variant is built for every non-empty subset, also for a group with no region in this model,
        so the variant names depend on the policy only."""
        plan = self.new_plan()
        group_of = {seg: g for g, segs in groups.items() for seg in segs}
        order = list(groups)
        subsets = [tuple(n for k, n in enumerate(order) if mask >> k & 1) for mask in range(1, 1 << len(order))]
        variant = {s: "reuse_" + "_".join(s) for s in subsets}

        def rewrite(op: Run) -> dict[str, list[Op]] | None:
            group = group_of.get(op.segment)
            if group is None:
                return None
            stores, loads = self.cache_ops(plan, op.segment, self.segments[op.segment].outputs)
            return {"full": [op, *stores], **{variant[s]: loads if group in s else [op, *stores] for s in subsets}}

        plan.variants = per_segment(plan.variants["full"], ["full", *variant.values()], rewrite)
        return plan

    def probe_skip(self, first: int, last: int, tag: str, probe_tag: str, mid_tag: str) -> Plan:
        """First-Block Cache / DBCache: the ``first`` blocks from the first one that reads the latent
        (:meth:`first_latent_block`) always run and their residual is the probe; the blocks before
        them (another stream's) run too; the middle blocks are skipped by their delta; the ``last``
        blocks always run."""
        L, f0 = len(self.blocks), self.first_latent_block()
        if L - f0 < 2:
            raise ModelError(f"{tag} needs at least two blocks that read the latent")
        plan = self.new_plan()
        ex = plan.examples
        probe_segs = self.range_segments(0, f0 + first - 1)
        ins0, outs0 = self.range_io(self.range_segments(f0, f0 + first - 1))
        pairs0 = self.pair_streams(ins0, outs0, probe_tag)
        main = next((p for p in pairs0 if p.base is not None and p.base in self.latent_dependent), None)
        if main is None:
            raise ModelError(f"{tag}: blocks {f0}..{f0 + first - 1} have no residual stream (an output with the "
                             "shape of their input)")
        ref, r1, signal = cache_name(tag, "ref"), f"{tag}__r1", f"{tag}__signal"
        ex[ref] = ex[main.output]
        ex[r1] = ex[main.output]
        ex[signal] = torch.empty(())
        probe = self.add_segment(
            plan, f"{tag}_probe",
            rel_l1_probe(main.output, ref, signal, ex, residual_of=main.base, emit_current_as=r1,
                         batch_dim=self.item_dim(main.output)),
            "probe",
        )
        commit = self.add_segment(plan, f"{tag}_commit", copy_values({r1: ref}, ex), "cache")
        mid_segs = self.range_segments(f0 + first, L - 1 - last)
        write, apply, _ = self.range_delta(plan, f0 + first, L - 1 - last, mid_tag)
        full = plan.variants["full"]
        head, tail = split_head(full, ["prologue"] + probe_segs)
        head += [Load(ref, ref), Run(probe)]
        tail_full = insert_after(tail, mid_segs[-1], write + [Run(commit), Store(ref, ref)])
        tail_reuse = replace(tail, mid_segs, apply)
        plan.variants = {"head": head, "tail_full": tail_full, "tail_reuse": tail_reuse, "full": full}
        plan.signal = signal
        return plan

    def forecast(self, method: ForecastMethod, streams: str, kinds: tuple[str, ...] | None = None) -> Plan:
        """TaylorSeer / HiCache / FoCa: full steps update each stream's forecast state, cached steps
        replace the stream by its forecast (see :mod:`cachec.forecast`).

        ``module`` streams are the attention/MLP outputs FORA caches (``kinds``: only regions of
        those kinds, FasterCache's self-attention); ``step`` streams are the residuals of the whole
        block stack (one per residual stream), FreqCa's memory saving.
        """
        plan = self.new_plan()
        if streams == "module":
            by_seg = self.region_by_segment()
            if kinds is not None:
                by_seg = {s: r for s, r in by_seg.items() if r.kind in kinds}

            def rewrite(op: Run) -> dict[str, list[Op]] | None:
                if op.segment not in by_seg:
                    return None
                update, forecast = self.forecast_ops(plan, op.segment, self.segments[op.segment].outputs, method)
                return {"full": [op, *update], "reuse": forecast}

            plan.variants = per_segment(plan.variants["full"], ["full", "reuse"], rewrite)
            return plan
        ex = plan.examples
        segs = self.range_segments(0, len(self.blocks) - 1)
        inputs, outputs = self.range_io(segs)
        pairs = [StreamPair(p.output, p.base, f"fc_stack__r{k}")
                 for k, p in enumerate(self.pair_streams(inputs, outputs, "fc_stack"))]
        for p in pairs:
            ex[p.cache] = ex[p.output]
        write = self.add_segment(plan, "fc_stack_delta", delta_write(pairs, ex), "cache")
        apply = self.add_segment(plan, "fc_stack_apply", delta_apply(pairs, ex), "cache")
        update, forecast = self.forecast_ops(plan, "fc_stack", [p.cache for p in pairs], method)
        full = plan.variants["full"]
        plan.variants["reuse"] = replace(full, segs, forecast + [Run(apply)])
        plan.variants["full"] = insert_after(full, segs[-1], [Run(write)] + update)
        return plan

    def _split_prologue_for_tails(self, plan: Plan) -> None:
        """A dynamic method's probe head runs the prologue, which holds every hoisted conditioning
        value: the adaLN modulation of *every* block, RoPE tables, the final layer's shift/scale.
        A cached step needs only what the head and the reuse tail read, so the rest moves into a
        segment that only the full tail (and the full variant) runs: a cached FLUX step no longer
        computes 57 blocks' modulations it never uses."""
        head = plan.variants.get("head")
        if not head or Run("prologue") not in head or "prologue" not in plan.base:
            return
        needed = self.values_read(plan, ["head", "tail_reuse"], lambda variant, seg: seg == "prologue")
        rest = self.split_base(plan, "prologue", needed, "prologue_full")
        if rest is not None:
            plan.variants["tail_full"] = [Run(rest)] + plan.variants["tail_full"]

    # -- result ---------------------------------------------------------------------------------
    def plan(self, policy) -> Program:
        """The program of ``policy`` (a :class:`~cachec.methods.base.Method`), without ``none_flops``
        (:func:`compile_program` adds them)."""
        policy = policy.resolved()  # calibration problems surface at compile time
        return self.program(self.plan_of(policy), policy)

    def plan_of(self, policy) -> Plan:
        """The :class:`Plan` ``policy`` returns, checked: it built the variants its controller runs,
        and its cached variants reuse something."""
        plan = policy.plan(self)
        if not isinstance(plan, Plan):
            raise ModelError(f"{policy.spec}: its plan returned {type(plan).__name__}, not a Plan (a bug in the method)")
        missing = sorted(policy.required_variants() - set(plan.variants))
        if missing:
            raise ModelError(f"{policy.spec}: its plan built no {missing[0]!r} variant (a bug in the method)")
        check_plan_reuses(plan.variants, self.captured.model_class, policy.spec)
        return plan

    @staticmethod
    def base_flops(plan: Plan) -> float:
        """Per-sample FLOPs of the uncached model (every base segment of ``plan`` once)."""
        return sum(s.flops for s in plan.base.values())

    def spec_in(self, plan: Plan, name: str) -> ValueSpec | None:
        """:meth:`spec` of a value of the model or one ``plan`` made."""
        node = None if name == self.captured.output_name else self.nodes.get(name)
        return value_spec(node if node is not None else plan.examples.get(name), self.bsym)

    def program(self, plan: Plan, policy) -> Program:
        """The :class:`~cachec.program.Program` of ``plan``: the segments its variants run, the specs
        of the values they pass, and what was planned (``planned``); variants coalesced and segments
        specialised."""
        self._split_prologue_for_tails(plan)
        segments = dict(plan.base)
        segments.update(plan.added)
        used = {op.segment for ops in plan.variants.values() for op in ops if isinstance(op, Run)}
        segments = {k: v for k, v in segments.items() if k in used}
        values: dict[str, ValueSpec] = {}
        for ops in plan.variants.values():
            for op in ops:
                for n in self.op_values(segments, op):
                    if n not in values:
                        spec = self.spec_in(plan, n)
                        if spec is not None:
                            values[n] = spec
        program = Program(
            segments=segments,
            variants=dict(plan.variants),
            inputs=list(self.captured.input_names),
            output=self.captured.output_name,
            values=values,
            model=ModelFacts(
                model_class=self.captured.model_class,
                config=dict(self.captured.config),
                batch_dims=self.captured.batch_dims,
                max_batch=self.captured.max_batch,
                output_form=self.captured.output_form,
            ),
            planned=PlanFacts(
                policy=policy.spec,
                method=policy,
                policy_data=policy.data,
                blocks=self.blocks,
                regions=[r.to_json() for r in self.regions],
                base_path=list(plan.order),
                signal=plan.signal,
                feedback=list(plan.feedback),
                step_inputs=list(plan.step_inputs),
                **plan.meta,
            ),
        )
        coalesce(program)
        specialize_segments(program)
        check_weight_ownership(program)
        return program

    @staticmethod
    def op_values(segments: dict[str, Segment], op: Op) -> list[str]:
        if isinstance(op, Run):
            seg = segments[op.segment]
            return seg.inputs + seg.outputs
        return [op.cache, op.value]


def _graph_copy(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``gm``'s graph over the same weights (a pass may then rewrite it in place)."""
    graph = fx.Graph()
    out = graph.graph_copy(gm.graph, {})
    graph.output(out)
    new = graph_module(gm, graph, type(gm).__name__)
    new.meta.update(gm.meta)
    return new


def next_value(cache: str) -> str:
    """The value a variant computes as a cache's next content (not itself a cache buffer)."""
    return "next__" + cache[len(CACHE_PREFIX):]


def compile_program(captured: Captured, policy) -> Program:
    """Plan ``policy`` on ``captured`` (whose graph the passes rewrite in place: pass a copy to
    keep it) and record the uncached step's FLOPs, the NFE unit every runtime counts in.

    The one place that does both, so a program never reaches a runtime or an artifact without
    its ``none_flops`` (the cached variants of a program no longer contain the plain full step).
    """
    planner = Planner(captured)
    policy = policy.resolved()  # calibration problems surface at compile time
    plan = planner.plan_of(policy)
    program = planner.program(plan, policy)
    program.planned.none_flops = planner.base_flops(plan)
    return program
