"""Fuse a variant (a sequence of segment runs with cache loads and stores) into one graph.

This is the *variant* graph of DESIGN.md: the cache reads of the variant become placeholders
named after their cache buffers, the cache writes become extra outputs, and the segments in
between are inlined in order. Parameters stay the very tensors the segments hold (get_attr on
shared tensors, never copies), so fusing costs no memory. Backends that compile whole graphs
(eager with one call per step, Inductor) run fused variants; TensorRT and ONNX keep segments so
that no weight is lowered twice.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import fx

from cachec.graph_keys import OUTPUTS_KEY
from cachec.passes import NarrowChunkedLinears, PassManager
from cachec.passes.infra import build_module, eliminate_dead_code
from cachec.program import Load, Op, Run, Store


@dataclass
class FusedVariant:
    module: fx.GraphModule
    inputs: list[str]  # value names: model inputs and values produced by an earlier variant of the step
    cache_inputs: list[str]  # cache buffers read (placeholders after ``inputs``)
    outputs: list[str]  # values the rest of the step needs
    cache_outputs: list[str]  # cache buffers written (outputs after ``outputs``)
    flops: float


def variant_io(segments: dict, ops: list[Op]) -> tuple[list[str], list[str]]:
    """Values a variant reads from outside (in first-use order) and the caches it loads."""
    made: set[str] = set()
    inputs: list[str] = []
    loads: list[str] = []
    for op in ops:
        if isinstance(op, Load):
            loads.append(op.cache)
            made.add(op.value)
        elif isinstance(op, Run):
            seg = segments[op.segment]
            for name in seg.inputs:
                if name not in made and name not in inputs:
                    inputs.append(name)
            made.update(seg.outputs)
    return inputs, loads


def fuse_variant(segments: dict, ops: list[Op], keep: set[str]) -> FusedVariant:
    """Inline ``ops`` into one GraphModule.

    ``keep`` names the values that must be returned besides cache writes (the model output,
    and for a probe head the values its tails read plus the probe signal). Placeholders are the
    variant's outside inputs, named ``in__<value>``, then its cache reads, named after the cache.
    """
    inputs, loads = variant_io(segments, ops)
    g = fx.Graph()
    env: dict[str, fx.Node] = {}
    placeholder_meta = {}
    for op in ops:
        if isinstance(op, Run):
            for n in segments[op.segment].module.graph.nodes:
                if n.op == "placeholder":
                    placeholder_meta.setdefault(n.name, n.meta)
    for name in inputs:
        env[name] = g.placeholder(f"in__{name}")
        env[name].meta = dict(placeholder_meta.get(name, {}))
    read = {name: env[name] for name in inputs}
    cache_nodes = {}
    for cache in dict.fromkeys(loads):
        cache_nodes[cache] = g.placeholder(cache)
    cache_outputs: dict[str, str] = {}
    attrs: dict[str, torch.Tensor] = {}
    flops = 0.0
    for op in ops:
        if isinstance(op, Load):
            env[op.value] = cache_nodes[op.cache]
        elif isinstance(op, Store):
            cache_outputs[op.cache] = op.value
        else:
            seg = segments[op.segment]
            flops += seg.flops
            sub = seg.module
            local: dict[fx.Node, fx.Node] = {}
            for n in sub.graph.nodes:
                if n.op == "placeholder":
                    local[n] = env[n.name]
                elif n.op == "get_attr":
                    target = str(n.target)
                    attrs[target] = operator.attrgetter(target)(sub)
                    local[n] = g.get_attr(target)
                    local[n].meta = dict(n.meta)
                elif n.op == "output":
                    for name, out in zip(sub.meta[OUTPUTS_KEY], n.args[0], strict=True):
                        env[name] = local[out]
                else:
                    local[n] = g.node_copy(n, local.__getitem__)
    # a value the variant only reads is not returned; one it reads and computes anew is (FasterCache's
    # CFG rebuild reads the conditional half of the output and makes the whole output)
    out_names = [k for k in sorted(keep) if k in env and env[k] is not read.get(k)]
    results = [env[k] for k in out_names] + [env[v] for v in cache_outputs.values()]
    g.output(tuple(results))
    eliminate_dead_code(g)
    module = build_module(attrs, g, "Variant")
    return FusedVariant(module, inputs, list(dict.fromkeys(loads)), out_names, list(cache_outputs), flops)



def narrow_linears(fused: FusedVariant) -> FusedVariant:
    """Let the variant's chunked linears compute only the chunks it reads
    (:class:`~cachec.passes.NarrowChunkedLinears`), in place; its FLOPs drop by what no longer runs.

    For backends that run the fused graph with the segments' own parameters (eager, Inductor):
    the narrowed linears read views of the weights, so nothing is copied.
    """
    narrow = NarrowChunkedLinears()
    PassManager([narrow])(fused.module)
    fused.flops -= narrow.saved_flops
    return fused
