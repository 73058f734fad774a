"""Hoist every conditioning-only computation to the front of the graph.

A node is *conditioning* when it depends on no stream input (latent or text tokens): timestep
embeddings, adaLN modulation vectors, RoPE tables, class embeddings. Moving them first has
three effects the rest of cachec relies on:

* modules reused out of order (DiT calls ``transformer_blocks[0].norm1.emb`` again after the
  block loop) end up in one place, so no parameter belongs to two segments;
* a cached step still sees the *current* adaLN shift/scale/gate, as FORA and TeaCache require;
* probes such as TeaCache's modulated input need no weights of their own.

Shape reads (``sym_size``) of inputs are treated as conditioning: they only carry the batch size.
A shape read of a computed stream tensor stays with the stream: its size may be data-dependent
(``nonzero``, a mask's ``sum``), and hoisting the read above the tensor would break the graph.
"""

from __future__ import annotations

import torch
from torch import fx

from cachec.graph_keys import COND_KEY

from .infra import Pass, PassError, PassResult


def _is_shape_read(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in (torch.ops.aten.sym_size.int, torch.ops.aten.sym_size)


class HoistConditioning(Pass):
    def __init__(self, stream_inputs: list[str]):
        self.stream_inputs = set(stream_inputs)

    def requires(self, gm: fx.GraphModule) -> None:
        names = {n.name for n in gm.graph.nodes if n.op == "placeholder"}
        missing = self.stream_inputs - names
        if missing:
            raise PassError(f"stream inputs {sorted(missing)} are not placeholders of the graph")

    def call(self, gm: fx.GraphModule) -> PassResult:
        stream: set[fx.Node] = set()
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                if node.name in self.stream_inputs:
                    stream.add(node)
            elif node.op == "call_function" and not (_is_shape_read(node) and node.args[0].op == "placeholder"):
                if any(a in stream for a in node.all_input_nodes):
                    stream.add(node)
        order = list(gm.graph.nodes)
        head = [n for n in order if n.op in ("placeholder", "get_attr")]
        cond = [n for n in order if n.op == "call_function" and n not in stream]
        rest = [n for n in order if n.op == "call_function" and n in stream]
        other = [n for n in order if n.op not in ("placeholder", "get_attr", "call_function", "output")]
        if other:
            raise PassError(f"unexpected node kinds after export: {[n.format_node() for n in other]}")
        new_order = head + cond + rest
        modified = [n for n in order if n.op != "output"] != new_order
        out = next(n for n in order if n.op == "output")
        for node in new_order:
            out.prepend(node)
            if node.op == "call_function":
                node.meta[COND_KEY] = node not in stream
        return PassResult(gm, modified)

    def ensures(self, gm: fx.GraphModule) -> None:
        seen_stream = False
        for node in gm.graph.nodes:
            if node.op != "call_function":
                continue
            if node.meta.get(COND_KEY):
                if seen_stream:
                    raise PassError(f"conditioning node {node.name} after a stream node")
            else:
                seen_stream = True
