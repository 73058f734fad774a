"""From a captured graph and a policy to a :class:`~cachec.program.Program`.

The planner runs the structural passes once (strip export scaffolding → hoist conditioning →
assign segments), splits the graph into segments, and then asks the policy's granularity for
its paths:

* ``module`` (FORA): the reuse path skips every attention/MLP region segment and loads its
  outputs from caches; the full path stores them.
* ``step`` / ``block`` (static, Δ-DiT, FBCache, TeaCache): a weightless residual-delta segment
  writes ``out − in`` of a block range on full steps and applies ``in + delta`` on cached ones.
* dynamic policies split a step into a *head* (up to the probe) and two *tails*.
"""

from __future__ import annotations

import re

import torch
from torch import fx

from cachec.graph_keys import COND_KEY
from cachec.passes import AssignSegments, HoistConditioning, PassManager, StripExportArtifacts
from cachec.passes.coalesce import coalesce
from cachec.passes.dedupe_conditioning import DedupeConditioning
from cachec.passes.probes import easycache_write, latent_step_probe, rel_l1_probe
from cachec.passes.remove_noops import RemoveNoOps
from cachec.passes.residual_delta import StreamPair, copy_values, delta_apply, delta_write, linear_mix

from .capture import Captured
from .errors import ModelError
from .flops import graph_flops
from .forecast import PREDICT, UPDATE, ForecastMethod
from .policy import DeltaPolicy, Policy
from .program import (
    CACHE_PREFIX,
    Program,
    Segment,
    ValueSpec,
    batch_symbol,
    cache_name,
    check_weight_ownership,
    split,
    split_segment,
    value_spec,
)
from .regions import find_blocks, module_regions
from .token_planner import plan_tokens

_STRUCTURAL = {
    torch.ops.aten.add.Tensor, torch.ops.aten.cat.default, torch.ops.aten.slice.Tensor, torch.ops.aten.view.default,
    torch.ops.aten.reshape.default, torch.ops.aten.clone.default, torch.ops.aten.to.dtype,
    torch.ops.aten.contiguous.default, torch.ops.aten.clip.default, torch.ops.aten.clamp.default,
}


class Planner:
    """Holds the segmented base program and builds policy paths on top of it."""

    def __init__(self, captured: Captured):
        self.captured = captured
        gm = captured.graph_module
        PassManager([StripExportArtifacts(), RemoveNoOps(), HoistConditioning(captured.stream_inputs),
                     DedupeConditioning()])(gm)
        self.blocks = find_blocks(gm, captured.model_class)
        if not self.blocks:
            raise ModelError(
                f"{captured.model_class}: found no repeated blocks (numbered children such as "
                "transformer_blocks.0) in the module hierarchy, so there is nothing to cache"
            )
        self.regions = module_regions(gm, self.blocks, captured.cross_attention)
        region_nodes = {n: r for r in self.regions for n in r.nodes}
        assign = AssignSegments(self.blocks, captured.model_class, self.regions, region_nodes)
        PassManager([assign]).__call__(gm)
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
        self.block_segments = [[s for s in self.order if s.startswith(f"b{i}_")] for i in range(len(self.blocks))]
        self._latent_dependent = self._latent_closure()
        total = sum(s.flops for s in self.segments.values())
        for r in self.regions:
            r.flops = self.segments[self.region_segment[r.name]].flops
            r.share = r.flops / total if total else 0.0
        self.extra: dict[str, Segment] = {}
        self.paths: dict[str, list[tuple]] = {"full": [("run", s) for s in self.order]}
        self.signal: str | None = None
        self.feedback: list[str] = []  # scalars a tail hands back to the controller (EasyCache)
        self.step_inputs: list[str] = []  # host-computed inputs of a step (forecast coefficients)

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
                if name not in made and name not in inputs and self._is_stream(name):
                    inputs.append(name)
        outputs = []
        for s in after:
            for name in self.segments[s].inputs:
                if name in made and name not in outputs:
                    outputs.append(name)
        return inputs, outputs

    def _is_stream(self, name: str) -> bool:
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

    def spec(self, name: str) -> ValueSpec | None:
        node = None if name == self.captured.output_name else self.nodes.get(name)
        return value_spec(node if node is not None else self.meta.get(name), self.bsym)

    # -- building blocks of paths --------------------------------------------------------------
    def add_segment(self, name: str, module: fx.GraphModule, role: str) -> str:
        seg = Segment(name, module, graph_flops(module, self.batch), role)
        self.extra[name] = seg
        return name

    def range_delta(self, a: int, b: int, tag: str) -> tuple[list[tuple], list[tuple], list[StreamPair]]:
        """Ops that write the delta of blocks a..b on full steps, and ops that apply it instead."""
        segs = self.range_segments(a, b)
        inputs, outputs = self.range_io(segs)
        pairs = self.pair_streams(inputs, outputs, tag)
        for p in pairs:
            self.meta[p.cache] = self.meta[p.output]
        w = self.add_segment(f"{tag}_write", delta_write(pairs, self.meta), "cache")
        r = self.add_segment(f"{tag}_apply", delta_apply(pairs, self.meta), "cache")
        write_ops = [("run", w)] + [("store", p.cache, p.cache) for p in pairs]
        apply_ops = [("load", p.cache, p.cache) for p in pairs] + [("run", r)]
        return write_ops, apply_ops, pairs

    def _replace(self, segs: list[str], ops: list[tuple]) -> list[tuple]:
        """The full path with the run of ``segs`` replaced by ``ops``."""
        out, done = [], False
        for op in self.paths["full"]:
            if op[1] in segs:
                if not done:
                    out.extend(ops)
                    done = True
                continue
            out.append(op)
        return out

    def _insert_after(self, path: list[tuple], seg: str, ops: list[tuple]) -> list[tuple]:
        i = next(k for k, op in enumerate(path) if op == ("run", seg))
        return path[: i + 1] + ops + path[i + 1 :]

    # -- policies -------------------------------------------------------------------------------
    def plan(self, policy: Policy) -> Program:
        g = policy.plan_granularity()
        if policy.needs_data and policy.data is None:
            policy.data = policy.load_data()  # calibration problems surface at compile time
        L = len(self.blocks)
        method = policy.forecast_method()
        if policy.name == "none":
            pass
        elif method is not None:
            self._plan_forecast(method, policy.streams())
        elif g == "module":
            self._plan_module_reuse()
        elif g == "token":  # ToCa / DuCa: gather/scatter variants (cachec/token_planner.py)
            plan_tokens(self, policy)
        elif policy.name == "fbcache":
            self._plan_probe_skip(1, 0, "fbcache", "fb_b0", "fb_tail")
        elif policy.name == "dbcache":
            p = policy.params
            if p["F"] + p["B"] >= L:
                raise ModelError(f"dbcache: F={p['F']} probe blocks plus B={p['B']} tail blocks leave no block of "
                                 f"the model's {L} to cache; use F + B < {L}")
            self._plan_probe_skip(p["F"], p["B"], "dbcache", "db_probe", "db_mid")
        elif policy.name == "easycache":
            self._plan_easycache()
        elif policy.name == "teacache":
            self._plan_teacache()
        elif isinstance(policy, DeltaPolicy):
            a, b = policy.block_range(L)
            self._plan_range(a, b, f"delta_b{a}_{b}")
        else:
            self._plan_range(0, L - 1, "stack")
        return self.program(policy)

    def _plan_range(self, a: int, b: int, tag: str) -> None:
        write, apply, _ = self.range_delta(a, b, tag)
        segs = self.range_segments(a, b)
        reuse = self._replace(segs, apply)
        self.paths["full"] = self._insert_after(self.paths["full"], segs[-1], write)
        self.paths["reuse"] = reuse

    def _plan_module_reuse(self) -> None:
        full, reuse = [], []
        by_seg = {self.region_segment[r.name]: r for r in self.regions}
        for op in self.paths["full"]:
            region = by_seg.get(op[1])
            if region is None:
                full.append(op)
                reuse.append(op)
                continue
            outs = self.segments[op[1]].outputs
            caches = [cache_name(op[1], str(k)) for k in range(len(outs))]
            for o, c in zip(outs, caches, strict=True):
                self.meta[c] = self.meta[o]
            full.append(op)
            full.extend(("store", o, c) for o, c in zip(outs, caches, strict=True))
            reuse.extend(("load", c, o) for o, c in zip(outs, caches, strict=True))
        self.paths["full"], self.paths["reuse"] = full, reuse

    def _plan_probe_skip(self, first: int, last: int, tag: str, probe_tag: str, mid_tag: str) -> None:
        """First-Block Cache / DBCache: blocks ``0..first-1`` always run and their residual is the
        probe; the middle blocks are skipped by their delta; the ``last`` blocks always run."""
        L = len(self.blocks)
        if L < 2:
            raise ModelError(f"{tag} needs at least two blocks")
        probe_segs = self.range_segments(0, first - 1)
        ins0, outs0 = self.range_io(probe_segs)
        pairs0 = self.pair_streams(ins0, outs0, probe_tag)
        main = next((p for p in pairs0 if p.base is not None and p.base in self._latent_dependent), None)
        if main is None:
            raise ModelError(f"{tag}: blocks 0..{first - 1} have no residual stream (an output with the shape of "
                             "their input)")
        ref, r1, signal = cache_name(tag, "ref"), f"{tag}__r1", f"{tag}__signal"
        self.meta[ref] = self.meta[main.output]
        self.meta[r1] = self.meta[main.output]
        self.meta[signal] = torch.empty(())
        probe = self.add_segment(
            f"{tag}_probe",
            rel_l1_probe(main.output, ref, signal, self.meta, residual_of=main.base, emit_current_as=r1),
            "probe",
        )
        commit = self.add_segment(f"{tag}_commit", copy_values({r1: ref}, self.meta), "cache")
        mid_segs = self.range_segments(first, L - 1 - last)
        write, apply, _ = self.range_delta(first, L - 1 - last, mid_tag)
        head_segs = ["prologue"] + probe_segs
        head = [op for op in self.paths["full"] if op[1] in head_segs] + [("load", ref, ref), ("run", probe)]
        tail = [op for op in self.paths["full"] if op[1] not in head_segs]
        tail_full = self._insert_after(tail, mid_segs[-1], write + [("run", commit), ("store", ref, ref)])
        tail_reuse = []
        for op in tail:
            if op[1] in mid_segs:
                if op[1] == mid_segs[0]:
                    tail_reuse.extend(apply)
                continue
            tail_reuse.append(op)
        self.paths = {"head": head, "tail_full": tail_full, "tail_reuse": tail_reuse, "full": self.paths["full"]}
        self.signal = signal

    def _plan_forecast(self, method: ForecastMethod, streams: str) -> None:
        """TaylorSeer / HiCache / FoCa: full steps update each stream's forecast state, cached steps
        replace the stream by its forecast (see :mod:`cachec.forecast`).

        ``module`` streams are the attention/MLP outputs FORA caches; ``step`` streams are the
        residuals of the whole block stack (one per residual stream), FreqCa's memory saving.
        """
        if streams == "module":
            by_seg = {self.region_segment[r.name]: r for r in self.regions}
            full, reuse = [], []
            for op in self.paths["full"]:
                if op[1] not in by_seg:
                    full.append(op)
                    reuse.append(op)
                    continue
                update, forecast = self._forecast_ops(op[1], self.segments[op[1]].outputs, method)
                full.append(op)
                full.extend(update)
                reuse.extend(forecast)
            self.paths["full"], self.paths["reuse"] = full, reuse
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
        update, forecast = self._forecast_ops("fc_stack", [p.cache for p in pairs], method)
        self.paths["reuse"] = self._replace(segs, forecast + [("run", apply)])
        self.paths["full"] = self._insert_after(self.paths["full"], segs[-1], [("run", write)] + update)

    def _forecast_ops(self, tag: str, streams: list[str], method: ForecastMethod) -> tuple[list[tuple], list[tuple]]:
        """Ops that fold fresh ``streams`` into their forecast state, and ops that forecast them."""
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
                self.meta[c] = self.meta[_next(c)] = self.meta[value]
                loads.append(("load", c, c))
            update_groups.append(([value] + state, [_next(c) for c in state]))
            stores_full.extend(("store", _next(c), c) for c in state)
            written = [state[i] for i in method.predict_writes]
            predict_groups.append((state, [value] + [_next(c) for c in written]))
            stores_reuse.extend(("store", _next(c), c) for c in written)
        upd = self.add_segment(f"{tag}_fc_update", linear_mix(update_groups, UPDATE, self.meta), "cache")
        pred = self.add_segment(f"{tag}_fc_predict", linear_mix(predict_groups, PREDICT, self.meta), "cache")
        return loads + [("run", upd)] + stores_full, loads + [("run", pred)] + stores_reuse

    def _plan_easycache(self) -> None:
        """EasyCache at the raw-latent level: ``v ≈ x + Δ`` with ``Δ = v − x`` of the last full step.

        The head is only a probe on the latent input (``d = mean|x − x_prev|``); the full tail runs
        the model and hands the controller the transformation rate ``k`` and ``mean|v|``.
        """
        x, v = self.captured.latent_input, self.captured.output_name
        if self.spec(x) != self.spec(v):
            raise ModelError(f"easycache reuses the output as latent + Δ, so the output must have the latent's "
                             f"shape; {x} is {self.spec(x).shape} and the output {self.spec(v).shape} "
                             "(a learned-sigma DiT doubles the channels)")
        x_prev, x_pf, v_pf, delta = (cache_name("easycache", n) for n in ("x_prev", "x_full", "v_full", "delta"))
        d, k, vnorm = "easycache__d", "easycache__k", "easycache__vnorm"
        for c in (x_prev, x_pf, v_pf, delta, "easycache__x", _next(x_pf), _next(v_pf)):
            self.meta[c] = self.meta[x]
        for c in (d, k, vnorm):
            self.meta[c] = torch.empty(())
        probe = self.add_segment("easycache_probe", latent_step_probe(x, x_prev, d, "easycache__x", self.meta), "probe")
        write = self.add_segment(
            "easycache_write", easycache_write(x, v, x_pf, v_pf, delta, k, vnorm, _next(x_pf), _next(v_pf), self.meta),
            "cache")
        apply = self.add_segment("easycache_apply", delta_apply([StreamPair(v, x, delta)], self.meta), "cache")
        head = [("load", x_prev, x_prev), ("run", probe), ("store", "easycache__x", x_prev)]
        tail_full = list(self.paths["full"]) + [("load", x_pf, x_pf), ("load", v_pf, v_pf), ("run", write),
                                                ("store", _next(x_pf), x_pf), ("store", _next(v_pf), v_pf),
                                                ("store", delta, delta)]
        tail_reuse = [("load", delta, delta), ("run", apply)]
        self.paths = {"head": head, "tail_full": tail_full, "tail_reuse": tail_reuse, "full": self.paths["full"]}
        self.signal, self.feedback = d, [k, vnorm]

    def _plan_teacache(self) -> None:
        attn = next((r for r in self.regions if r.block == 0 and r.kind in ("attn", "mlp")), None)
        if attn is None:
            raise ModelError("teacache needs an attention or MLP region in the first block to probe its input")
        seg_attn = self.region_segment[attn.name]
        first = self.block_segments[0]
        head_block = first[: first.index(seg_attn)]
        m = next((i for i in self.segments[seg_attn].inputs if i in self._latent_dependent and self._is_stream(i)), None)
        if m is None or not head_block:
            raise ModelError("teacache: the first block has no modulated input ahead of its first attention")
        prev, signal = cache_name("teacache", "prev"), "teacache__signal"
        self.meta[prev] = self.meta[m]
        self.meta["teacache__m"] = self.meta[m]
        self.meta[signal] = torch.empty(())
        probe = self.add_segment(
            "teacache_probe", rel_l1_probe(m, prev, signal, self.meta, emit_current_as="teacache__m"), "probe"
        )
        L = len(self.blocks)
        write, apply, _ = self.range_delta(0, L - 1, "stack")
        head_segs = ["prologue"] + head_block
        head = [op for op in self.paths["full"] if op[1] in head_segs]
        head += [("load", prev, prev), ("run", probe), ("store", "teacache__m", prev)]
        tail = [op for op in self.paths["full"] if op[1] not in head_segs]
        stack = self.range_segments(0, L - 1)
        tail_full = self._insert_after(tail, stack[-1], write)
        tail_reuse = []
        for op in tail:
            if op[1] in stack:
                if op[1] == next(s for s in stack if s not in head_segs):
                    tail_reuse.extend(apply)
                continue
            tail_reuse.append(op)
        self.paths = {"head": head, "tail_full": tail_full, "tail_reuse": tail_reuse, "full": self.paths["full"]}
        self.signal = signal

    def _split_prologue_for_tails(self) -> None:
        """A dynamic policy's probe head runs the prologue, which holds every hoisted conditioning
        value: the adaLN modulation of *every* block, RoPE tables, the final layer's shift/scale.
        A cached step needs only what the head and the reuse tail read, so the rest moves into a
        segment that only the full tail (and the full path) runs: a cached FLUX step no longer
        computes 57 blocks' modulations it never uses."""
        head = self.paths.get("head")
        if not head or ("run", "prologue") not in head or "prologue" not in self.segments:
            return
        segs = {**self.segments, **self.extra}
        needed = {self.captured.output_name, *self.feedback}
        if self.signal:
            needed.add(self.signal)
        for name in ("head", "tail_reuse"):
            for op in self.paths[name]:
                if op[0] == "run" and op[1] != "prologue":
                    needed.update(segs[op[1]].inputs)
                elif op[0] == "store":
                    needed.add(op[1])
        first, rest = split_segment(self.segments["prologue"], needed, "prologue_full")
        if rest is None:
            return
        for seg in (first, rest):
            seg.flops = graph_flops(seg.module, self.batch)
        self.segments["prologue"] = first
        self.extra[rest.name] = rest
        run_rest = ("run", rest.name)
        self.paths["tail_full"] = [run_rest] + self.paths["tail_full"]
        full = self.paths["full"]
        at = full.index(("run", "prologue")) + 1
        self.paths["full"] = full[:at] + [run_rest] + full[at:]

    # -- result ---------------------------------------------------------------------------------
    def program(self, policy: Policy) -> Program:
        self._split_prologue_for_tails()
        segments = dict(self.segments)
        segments.update(self.extra)
        used = {op[1] for path in self.paths.values() for op in path if op[0] == "run"}
        segments = {k: v for k, v in segments.items() if k in used}
        values: dict[str, ValueSpec] = {}
        for path in self.paths.values():
            for op in path:
                names = self.segments_io(segments, op)
                for n in names:
                    if n not in values:
                        spec = self.spec(n)
                        if spec is not None:
                            values[n] = spec
        program = Program(
            segments=segments,
            paths=dict(self.paths),
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
                **({"tokens": self.token_meta} if getattr(self, "token_meta", None) else {}),
            },
        )
        coalesce(program)
        check_weight_ownership(program)
        return program

    @staticmethod
    def segments_io(segments: dict[str, Segment], op: tuple) -> list[str]:
        if op[0] == "run":
            seg = segments[op[1]]
            return seg.inputs + seg.outputs
        return [op[1], op[2]]


def _next(cache: str) -> str:
    """The value a path computes as a cache's next content (not itself a cache buffer)."""
    return "next__" + cache[len(CACHE_PREFIX):]


def plan_program(captured: Captured, policy: Policy) -> Program:
    return Planner(captured).plan(policy)
