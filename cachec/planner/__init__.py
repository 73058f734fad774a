"""From a captured graph and a method to a :class:`~cachec.program.Program`.

The planner runs the structural passes once (strip export scaffolding → remove no-ops → hoist
conditioning → assign segments), splits the graph into segments, and offers the *planning
primitives* methods build their variants from (:meth:`Method.plan <cachec.methods.base.Method.plan>`
calls them; the planner knows no method):

* :meth:`Planner.module_reuse` (FORA): the reuse variant skips every attention/MLP region segment
  and loads its outputs from caches; the full variant stores them.
* :meth:`Planner.range_reuse` (static, Δ-DiT, budget): a weightless residual-delta segment writes
  ``out − in`` of a block range on full steps and applies ``in + delta`` on cached ones.
* :meth:`Planner.probe_skip` (FBCache, DBCache): a step split into a *head* (up to the probe) and
  two *tails*; :meth:`Planner.split_head` is the split itself (TeaCache).
* :meth:`Planner.group_reuse` (PAB, T-GATE): module reuse decided per group of regions (self-,
  cross-, temporal attention), one variant per subset of groups reused.
* :meth:`Planner.skip_branch` (DeepCache): a U-Net's cached step loads one skip branch's deep
  feature and runs only the shallow path.
* :meth:`Planner.forecast` (TaylorSeer, HiCache, FoCa, AB-Cache): state updates on full steps,
  forecasts on cached ones; :meth:`Planner.band_forecast` (FreqCa) forecasts the stack residual
  with its low frequency band kept.

The segment factories these use are in :mod:`cachec.planner.segments`; fusing and coalescing
variants in :mod:`cachec.planner.fuse` and :mod:`cachec.planner.coalesce`.
"""

from __future__ import annotations

import re

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
from cachec.passes.infra import PassError

from ..capture import Captured
from ..errors import ModelError
from ..flops import graph_flops
from ..forecast import PREDICT, UPDATE, ForecastMethod
from ..program import (
    CACHE_PREFIX,
    Load,
    Op,
    Program,
    Run,
    Segment,
    Store,
    ValueSpec,
    batch_symbol,
    cache_name,
    check_weight_ownership,
    split,
    split_segment,
    value_spec,
)
from ..regions import ModuleIndex, find_blocks, module_regions
from . import band_split, cfg_cache
from . import verify as verify_segment
from .coalesce import coalesce
from .reuse_check import check_plan_reuses
from .segments import StreamPair, copy_values, delta_apply, delta_write, linear_mix, rel_l1_probe
from .skip_branch import deep_feature, skip_branch
from .specialize import specialize_segments

_STRUCTURAL = {
    torch.ops.aten.add.Tensor, torch.ops.aten.cat.default, torch.ops.aten.slice.Tensor, torch.ops.aten.view.default,
    torch.ops.aten.reshape.default, torch.ops.aten.clone.default, torch.ops.aten.to.dtype,
    torch.ops.aten.contiguous.default, torch.ops.aten.clip.default, torch.ops.aten.clamp.default,
}


class Planner:
    """Holds the segmented base program and the primitives methods build their variants with."""

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
        self.extra: dict[str, Segment] = {}
        self.variants: dict[str, list[Op]] = {"full": [Run(s) for s in self.order]}
        self.signal: str | None = None  # the probe value a dynamic method's controller reads
        self.feedback: list[str] = []  # scalars a tail hands back to the controller (EasyCache)
        self.step_inputs: list[str] = []  # host-computed inputs of a step (forecast coefficients)
        self.method_meta: dict = {}  # what a method's controller reads from the program (token regions)
        self.delta_forecast: ForecastMethod | None = None  # a hybrid: range deltas are forecast, not copied

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

    # -- building blocks of variants ------------------------------------------------------------
    def add_segment(self, name: str, module: fx.GraphModule, role: str) -> str:
        seg = Segment(name, module, graph_flops(module, self.batch), role)
        self.extra[name] = seg
        out = next(n for n in module.graph.nodes if n.op == "output")
        for value, node in zip(seg.outputs, out.args[0], strict=True):
            if value not in self.meta and "val" in node.meta:  # a value only this segment makes (a per-item signal)
                self.meta[value] = node.meta["val"]
        return name

    def segment(self, name: str) -> Segment:
        """A segment of the base program or one a method added."""
        return self.extra.get(name) or self.segments[name]

    def region_by_segment(self) -> dict:
        """Region segment name -> its :class:`~cachec.regions.Region`."""
        return {self.region_segment[r.name]: r for r in self.regions}

    def range_delta(self, a: int, b: int, tag: str) -> tuple[list[Op], list[Op], list[StreamPair]]:
        """Ops that write the delta of blocks a..b on full steps, and ops that apply it instead.

        With :attr:`delta_forecast` set (a hybrid policy, :mod:`cachec.methods.hybrid`) the full
        step folds the delta into its forecast state and the cached step applies its forecast."""
        segs = self.range_segments(a, b)
        inputs, outputs = self.range_io(segs)
        pairs = self.pair_streams(inputs, outputs, tag)
        if self.delta_forecast is not None:
            return self._forecast_delta(pairs, tag, self.delta_forecast)
        for p in pairs:
            self.meta[p.cache] = self.meta[p.output]
        w = self.add_segment(f"{tag}_write", delta_write(pairs, self.meta), "cache")
        r = self.add_segment(f"{tag}_apply", delta_apply(pairs, self.meta), "cache")
        write_ops = [Run(w)] + [Store(p.cache, p.cache) for p in pairs]
        apply_ops = [Load(p.cache, p.cache) for p in pairs] + [Run(r)]
        return write_ops, apply_ops, pairs

    def _forecast_delta(self, pairs: list[StreamPair], tag: str,
                        method: ForecastMethod) -> tuple[list[Op], list[Op], list[StreamPair]]:
        """:meth:`range_delta` of a hybrid: each delta is a plain value (``TAG__rK``), forecast state
        updates after the full step's write, a forecast before the cached step's apply."""
        pairs = [StreamPair(p.output, p.base, f"{tag}__r{k}") for k, p in enumerate(pairs)]
        for p in pairs:
            self.meta[p.cache] = self.meta[p.output]
        w = self.add_segment(f"{tag}_write", delta_write(pairs, self.meta), "cache")
        r = self.add_segment(f"{tag}_apply", delta_apply(pairs, self.meta), "cache")
        update, forecast = self.forecast_ops(tag, [p.cache for p in pairs], method)
        return [Run(w)] + update, forecast + [Run(r)], pairs

    def replace(self, segs: list[str], ops: list[Op], variant: list[Op] | None = None) -> list[Op]:
        """``variant`` (default: the full one) with the run of ``segs`` replaced by ``ops``."""
        out, done = [], False
        for op in self.variants["full"] if variant is None else variant:
            if isinstance(op, Run) and op.segment in segs:
                if not done:
                    out.extend(ops)
                    done = True
                continue
            out.append(op)
        return out

    @staticmethod
    def insert_after(variant: list[Op], seg: str, ops: list[Op]) -> list[Op]:
        i = variant.index(Run(seg))
        return variant[: i + 1] + ops + variant[i + 1 :]

    # -- planning primitives (what methods build their variants from) ----------------------------
    def range_reuse(self, a: int, b: int, tag: str) -> None:
        """full stores the delta of blocks a..b; reuse applies it instead of running them."""
        write, apply, _ = self.range_delta(a, b, tag)
        segs = self.range_segments(a, b)
        reuse = self.replace(segs, apply)
        self.variants["full"] = self.insert_after(self.variants["full"], segs[-1], write)
        self.variants["reuse"] = reuse

    def module_reuse(self) -> None:
        """full stores every attention/MLP region's outputs; reuse loads them instead of running it."""
        full, reuse = [], []
        by_seg = self.region_by_segment()
        for op in self.variants["full"]:
            if op.segment not in by_seg:
                full.append(op)
                reuse.append(op)
                continue
            outs = self.segments[op.segment].outputs
            caches = [cache_name(op.segment, str(k)) for k in range(len(outs))]
            for o, c in zip(outs, caches, strict=True):
                self.meta[c] = self.meta[o]
            full.append(op)
            full.extend(Store(o, c) for o, c in zip(outs, caches, strict=True))
            reuse.extend(Load(c, o) for o, c in zip(outs, caches, strict=True))
        self.variants["full"], self.variants["reuse"] = full, reuse

    def group_reuse(self, groups: dict[str, list[str]]) -> None:
        """PAB / T-GATE: module reuse decided per *group* of regions (self-, cross-, temporal attention).

        ``groups`` maps a group name to region segment names. Every variant runs the regions of the
        groups it does not reuse and stores their outputs (the next reuse reads the latest computed
        output, as the methods' hooks do); ``full`` runs them all, and ``reuse_<g1>_<g2>…`` (group
        names in the given order) loads the outputs of the groups named instead of running them. A
        variant is built for every non-empty subset, also for a group with no region in this model,
        so the variant names depend on the policy only."""
        group_of = {seg: g for g, segs in groups.items() for seg in segs}
        names = list(groups)
        subsets = [tuple(n for k, n in enumerate(names) if mask >> k & 1) for mask in range(1, 1 << len(names))]
        built: dict[str, list[Op]] = {"full": []}
        for subset in subsets:
            built["reuse_" + "_".join(subset)] = []
        for op in self.variants["full"]:
            group = group_of.get(op.segment) if isinstance(op, Run) else None
            if group is None:
                for ops in built.values():
                    ops.append(op)
                continue
            outs = self.segments[op.segment].outputs
            caches = [cache_name(op.segment, str(k)) for k in range(len(outs))]
            for o, c in zip(outs, caches, strict=True):
                self.meta[c] = self.meta[o]
            run = [op] + [Store(o, c) for o, c in zip(outs, caches, strict=True)]
            load = [Load(c, o) for o, c in zip(outs, caches, strict=True)]
            built["full"].extend(run)
            for subset in subsets:
                built["reuse_" + "_".join(subset)].extend(load if group in subset else run)
        self.variants.update(built)

    def skip_branch(self, branch: int, tag: str, policy: str) -> None:
        """DeepCache: full stores the deep feature of U-Net skip branch ``branch``; reuse loads it and
        runs only the shallow path (see :mod:`cachec.planner.skip_branch`)."""
        skip_branch(self, deep_feature(self, branch, policy), tag)

    def split_head(self, head_segs: list[str]) -> tuple[list[Op], list[Op]]:
        """The full variant split into the runs of ``head_segs`` (a dynamic step's head) and the rest."""
        head = [op for op in self.variants["full"] if op.segment in head_segs]
        tail = [op for op in self.variants["full"] if op.segment not in head_segs]
        return head, tail

    def probe_skip(self, first: int, last: int, tag: str, probe_tag: str, mid_tag: str) -> None:
        """First-Block Cache / DBCache: the ``first`` blocks from the first one that reads the latent
        (:meth:`first_latent_block`) always run and their residual is the probe; the blocks before
        them (another stream's) run too; the middle blocks are skipped by their delta; the ``last``
        blocks always run."""
        L, f0 = len(self.blocks), self.first_latent_block()
        if L - f0 < 2:
            raise ModelError(f"{tag} needs at least two blocks that read the latent")
        probe_segs = self.range_segments(0, f0 + first - 1)
        ins0, outs0 = self.range_io(self.range_segments(f0, f0 + first - 1))
        pairs0 = self.pair_streams(ins0, outs0, probe_tag)
        main = next((p for p in pairs0 if p.base is not None and p.base in self.latent_dependent), None)
        if main is None:
            raise ModelError(f"{tag}: blocks {f0}..{f0 + first - 1} have no residual stream (an output with the "
                             "shape of their input)")
        ref, r1, signal = cache_name(tag, "ref"), f"{tag}__r1", f"{tag}__signal"
        self.meta[ref] = self.meta[main.output]
        self.meta[r1] = self.meta[main.output]
        self.meta[signal] = torch.empty(())
        probe = self.add_segment(
            f"{tag}_probe",
            rel_l1_probe(main.output, ref, signal, self.meta, residual_of=main.base, emit_current_as=r1,
                         batch_dim=self.item_dim(main.output)),
            "probe",
        )
        commit = self.add_segment(f"{tag}_commit", copy_values({r1: ref}, self.meta), "cache")
        mid_segs = self.range_segments(f0 + first, L - 1 - last)
        write, apply, _ = self.range_delta(f0 + first, L - 1 - last, mid_tag)
        head, tail = self.split_head(["prologue"] + probe_segs)
        head += [Load(ref, ref), Run(probe)]
        tail_full = self.insert_after(tail, mid_segs[-1], write + [Run(commit), Store(ref, ref)])
        tail_reuse = self.replace(mid_segs, apply, tail)
        self.variants = {"head": head, "tail_full": tail_full, "tail_reuse": tail_reuse, "full": self.variants["full"]}
        self.signal = signal

    def forecast(self, method: ForecastMethod, streams: str, kinds: tuple[str, ...] | None = None) -> None:
        """TaylorSeer / HiCache / FoCa: full steps update each stream's forecast state, cached steps
        replace the stream by its forecast (see :mod:`cachec.forecast`).

        ``module`` streams are the attention/MLP outputs FORA caches (``kinds``: only regions of
        those kinds, FasterCache's self-attention); ``step`` streams are the residuals of the whole
        block stack (one per residual stream), FreqCa's memory saving.
        """
        if streams == "module":
            by_seg = self.region_by_segment()
            if kinds is not None:
                by_seg = {s: r for s, r in by_seg.items() if r.kind in kinds}
            full, reuse = [], []
            for op in self.variants["full"]:
                if op.segment not in by_seg:
                    full.append(op)
                    reuse.append(op)
                    continue
                update, forecast = self.forecast_ops(op.segment, self.segments[op.segment].outputs, method)
                full.append(op)
                full.extend(update)
                reuse.extend(forecast)
            self.variants["full"], self.variants["reuse"] = full, reuse
            return
        L = len(self.blocks)
        segs = self.range_segments(0, L - 1)
        inputs, outputs = self.range_io(segs)
        pairs = [StreamPair(p.output, p.base, f"fc_stack__r{k}")
                 for k, p in enumerate(self.pair_streams(inputs, outputs, "fc_stack"))]
        for p in pairs:
            self.meta[p.cache] = self.meta[p.output]
        write = self.add_segment("fc_stack_delta", delta_write(pairs, self.meta), "cache")
        apply = self.add_segment("fc_stack_apply", delta_apply(pairs, self.meta), "cache")
        update, forecast = self.forecast_ops("fc_stack", [p.cache for p in pairs], method)
        self.variants["reuse"] = self.replace(segs, forecast + [Run(apply)])
        self.variants["full"] = self.insert_after(self.variants["full"], segs[-1], [Run(write)] + update)

    def band_forecast(self, method: ForecastMethod, cutoff: float) -> None:
        """FreqCa: the residual of the whole block stack (the cumulative residual feature, one stream
        per residual stream) forecast with its low band kept from the last full step
        (:mod:`cachec.planner.band_split`). ``method``'s forecast row must leave out ``D_0``: the
        cached step computes ``R̂ = D_0 + G − low(G)`` from its ``G``."""
        L = len(self.blocks)
        segs = self.range_segments(0, L - 1)
        inputs, outputs = self.range_io(segs)
        pairs = self.pair_streams(inputs, outputs, "fc_stack")
        for p in pairs:
            if p.base is None or not band_split.splittable(self.meta[p.output].shape):
                raise ModelError(f"{self.captured.model_class}: FreqCa splits token streams [batch, tokens, channels] "
                                 f"that are residuals of the block stack; {p.output} is "
                                 f"{'not a residual' if p.base is None else 'shaped ' + str(list(self.meta[p.output].shape))}")
        streams = [f"fc_stack__r{k}" for k in range(len(pairs))]
        banded = [StreamPair(p.output, p.base, f"fc_stack__b{k}") for k, p in enumerate(pairs)]
        for p, r, b in zip(pairs, streams, banded, strict=True):
            self.meta[r] = self.meta[b.cache] = self.meta[p.output]
        write = self.add_segment("fc_stack_delta", delta_write([StreamPair(p.output, p.base, r) for p, r
                                                                in zip(pairs, streams, strict=True)], self.meta), "cache")
        apply = self.add_segment("fc_stack_apply", delta_apply(banded, self.meta), "cache")
        update, forecast = self.forecast_ops("fc_stack", streams, method)
        fn = band_split.band_forecast(cutoff)
        band_runs = []
        for k, (r, b) in enumerate(zip(streams, banded, strict=True)):
            last = cache_name("fc_stack", str(k), method.state_names()[0])
            example = cfg_cache.example(self.meta[r])
            gm = cfg_cache.traced(fn, [(r, example), (last, example)], [b.cache], f"BandForecast{k}")
            band_runs.append(Run(self.add_segment(f"fc_stack_band{k}", gm, "cache")))
        self.variants["reuse"] = self.replace(segs, forecast + band_runs + [Run(apply)])
        self.variants["full"] = self.insert_after(self.variants["full"], segs[-1], [Run(write)] + update)

    def verified_forecast(self, method: ForecastMethod, block: int, error: str) -> None:
        """SpeCa: :meth:`forecast` on ``module`` streams, plus a ``verify`` variant — the forecast
        step with block ``block``'s attention/MLP computed exactly on the forecast input *and*
        forecast, and ``error`` (:mod:`cachec.planner.verify`) comparing the two for the
        controller. The verified step keeps the computed values."""
        if method.predict_writes:  # the verify variant below forecasts without writing state
            raise ModelError(f"a verified forecast needs a method whose forecast writes no state; {method.name} does")
        full_before = list(self.variants["full"])
        self.forecast(method, "module")
        by_seg = self.region_by_segment()
        checked = [s for s in self.block_segments[block] if s in by_seg]
        if not checked:
            raise ModelError(f"{self.captured.model_class}: block {block} has no attention or MLP output to verify")
        # the reuse variant, with the checked regions run and their forecasts made beside them
        verify, pairs = [], []
        for op in full_before:
            if op.segment not in by_seg:
                verify.append(op)
                continue
            outputs = self.segments[op.segment].outputs
            state = [[cache_name(op.segment, str(k), n) for n in method.state_names()] for k in range(len(outputs))]
            loads = [Load(c, c) for names in state for c in names]
            if op.segment not in checked:
                verify.extend(loads + [Run(f"{op.segment}_fc_predict")])
                continue
            guesses = [f"{op.segment}__guess{k}" for k in range(len(outputs))]
            for g, value in zip(guesses, outputs, strict=True):
                self.meta[g] = self.meta[value]
            mix = self.add_segment(f"{op.segment}_fc_guess",
                                   linear_mix([(names, [g]) for names, g in zip(state, guesses, strict=True)],
                                              PREDICT, self.meta), "cache")
            verify.extend(loads + [Run(mix), op])
            pairs.extend(zip(guesses, outputs, strict=True))
        examples = [(n, cfg_cache.example(self.meta[n])) for pair in pairs for n in pair]
        self.meta[error] = torch.empty(())
        gm = cfg_cache.traced(verify_segment.relative_error(len(pairs)), examples, [error], "VerifyError")
        self.variants["verify"] = verify + [Run(self.add_segment("verify_error", gm, "cache"))]
        self.signal = error

    def forecast_ops(self, tag: str, streams: list[str], method: ForecastMethod) -> tuple[list[Op], list[Op]]:
        """Ops that fold fresh ``streams`` into their forecast state, and ops that forecast them."""
        if not streams:  # dead-code elimination after every pass leaves no region without outputs
            raise ModelError(f"{self.captured.model_class}: {tag} computes no value the rest of the model reads, "
                             "so there is nothing to forecast")
        dtype = self.meta[streams[0]].dtype
        self.meta[UPDATE] = torch.empty((method.state, 1 + method.state), dtype=dtype)
        self.meta[PREDICT] = torch.empty((1 + len(method.predict_writes), method.state), dtype=dtype)
        for name in (UPDATE, PREDICT):
            if name not in self.step_inputs:
                self.step_inputs.append(name)
        update_groups, predict_groups, loads, stores_full, stores_reuse = [], [], [], [], []
        for k, value in enumerate(streams):
            state = [cache_name(tag, str(k), s) for s in method.state_names()]
            for c in state:
                self.meta[c] = self.meta[next_value(c)] = self.meta[value]
                loads.append(Load(c, c))
            update_groups.append(([value] + state, [next_value(c) for c in state]))
            stores_full.extend(Store(next_value(c), c) for c in state)
            written = [state[i] for i in method.predict_writes]
            predict_groups.append((state, [value] + [next_value(c) for c in written]))
            stores_reuse.extend(Store(next_value(c), c) for c in written)
        upd = self.add_segment(f"{tag}_fc_update", linear_mix(update_groups, UPDATE, self.meta), "cache")
        pred = self.add_segment(f"{tag}_fc_predict", linear_mix(predict_groups, PREDICT, self.meta), "cache")
        return loads + [Run(upd)] + stores_full, loads + [Run(pred)] + stores_reuse

    def cfg_cache(self, tag: str, policy: str) -> None:
        """FasterCache's CFG-Cache: ``cfg_record`` stores the band deltas of a step's ``[uncond; cond]``
        output, ``cfg_rebuild`` makes the unconditional half from the conditional one and the deltas
        (see :mod:`cachec.planner.cfg_cache`); the controller runs them after the step's variant."""
        out = self.captured.output_name
        val = self.meta[out]
        if val.dim() not in (4, 5):
            raise ModelError(f"{policy}: CFG-Cache rebuilds the unconditional output from its 2-D spectrum, so it "
                             f"needs an image output (B, C, H, W) or a video output (B, C, F, H, W); "
                             f"{self.captured.model_class} returns rank {val.dim()} ({tuple(val.shape)})")
        low, high = cache_name(tag, "low"), cache_name(tag, "high")
        w_low, w_high = cfg_cache.WEIGHTS
        self.meta[low] = self.meta[high] = self.meta[next_value(low)] = self.meta[next_value(high)] = \
            torch.empty_like(val, dtype=torch.complex64)  # a fake tensor: keeps the symbolic batch
        for w in (w_low, w_high):
            self.meta[w] = torch.empty((), dtype=torch.float32)  # the hook's weights are Python floats
            if w not in self.step_inputs:
                self.step_inputs.append(w)
        x = cfg_cache.example(val)
        d = cfg_cache.example(val, torch.complex64)
        w = torch.ones((), dtype=torch.float32)
        rec = self.add_segment(f"{tag}_record", cfg_cache.traced(
            cfg_cache.record, [(out, x)], [next_value(low), next_value(high)], "CfgRecord"), "cache")
        reb = self.add_segment(f"{tag}_rebuild", cfg_cache.traced(
            cfg_cache.rebuild, [(out, x), (low, d), (high, d), (w_low, w), (w_high, w)],
            [out, next_value(low), next_value(high)], "CfgRebuild"), "cache")
        stores = [Store(next_value(low), low), Store(next_value(high), high)]
        self.variants["cfg_record"] = [Run(rec), *stores]
        self.variants["cfg_rebuild"] = [Load(low, low), Load(high, high), Run(reb), *stores]

    def _split_prologue_for_tails(self) -> None:
        """A dynamic method's probe head runs the prologue, which holds every hoisted conditioning
        value: the adaLN modulation of *every* block, RoPE tables, the final layer's shift/scale.
        A cached step needs only what the head and the reuse tail read, so the rest moves into a
        segment that only the full tail (and the full variant) runs: a cached FLUX step no longer
        computes 57 blocks' modulations it never uses."""
        head = self.variants.get("head")
        if not head or Run("prologue") not in head or "prologue" not in self.segments:
            return
        segs = {**self.segments, **self.extra}
        needed = {self.captured.output_name, *self.feedback}
        if self.signal:
            needed.add(self.signal)
        for name in ("head", "tail_reuse"):
            for op in self.variants[name]:
                if isinstance(op, Run) and op.segment != "prologue":
                    needed.update(segs[op.segment].inputs)
                elif isinstance(op, Store):
                    needed.add(op.value)
        first, rest = split_segment(self.segments["prologue"], needed, "prologue_full")
        if rest is None:
            return
        for seg in (first, rest):
            seg.flops = graph_flops(seg.module, self.batch)
        self.segments["prologue"] = first
        self.segments[rest.name] = rest  # still part of the uncached model: base_flops counts it
        run_rest = Run(rest.name)
        self.variants["tail_full"] = [run_rest] + self.variants["tail_full"]
        self.variants["full"] = self.insert_after(self.variants["full"], "prologue", [run_rest])

    # -- result ---------------------------------------------------------------------------------
    def plan(self, policy) -> Program:
        """The program of ``policy`` (a :class:`~cachec.methods.base.Method`): it plans its variants
        with the primitives above, then the planner checks it built the ones its controller runs."""
        if policy.needs_data and policy.data is None:
            policy.data = policy.load_data()  # calibration problems surface at compile time
        policy.plan(self)
        missing = sorted(policy.required_variants() - set(self.variants))
        if missing:
            raise ModelError(f"{policy.spec}: its plan built no {missing[0]!r} variant (a bug in the method)")
        check_plan_reuses(self.variants, self.captured.model_class, policy.spec)
        return self.program(policy)

    def base_flops(self) -> float:
        """Per-sample FLOPs of the uncached model (every base segment once)."""
        return sum(s.flops for s in self.segments.values())

    def program(self, policy) -> Program:
        self._split_prologue_for_tails()
        segments = dict(self.segments)
        segments.update(self.extra)
        used = {op.segment for ops in self.variants.values() for op in ops if isinstance(op, Run)}
        segments = {k: v for k, v in segments.items() if k in used}
        values: dict[str, ValueSpec] = {}
        for ops in self.variants.values():
            for op in ops:
                for n in self.op_values(segments, op):
                    if n not in values:
                        spec = self.spec(n)
                        if spec is not None:
                            values[n] = spec
        program = Program(
            segments=segments,
            variants=dict(self.variants),
            inputs=list(self.captured.input_names),
            output=self.captured.output_name,
            values=values,
            meta={
                "model_class": self.captured.model_class,
                "config": dict(self.captured.config),
                "policy": policy.spec,
                "blocks": self.blocks,
                "regions": [r.to_json() for r in self.regions],
                "signal": self.signal,
                "feedback": list(self.feedback),
                "step_inputs": list(self.step_inputs),
                "policy_data": policy.data,
                "base_path": [s for s in self.order],
                "batch_dims": self.captured.batch_dims,
                "max_batch": self.captured.max_batch,
                "output_form": self.captured.output_form,
                **self.method_meta,
            },
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
    program = planner.plan(policy)
    program.meta["none_flops"] = planner.base_flops()
    return program
