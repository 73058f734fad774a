"""Graph surgery of the planner: cut a tagged graph into segments, and a segment in two.

The program (:mod:`cachec.program`) only holds segments; how they are cut from the captured graph
is planning. Every segment module is made by :func:`~passes.infra.build_module`, so the dead-value
lint checks each cut once, as it checks a pass's result.

A batch size (a SymInt) never crosses a cut: the consuming segment re-reads it from one of its
tensor inputs (:func:`rematerialise`), so segment interfaces are tensors only (what ONNX and
TensorRT need).
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from cachec.errors import ModelError
from cachec.graph_keys import SEGMENT_KEY
from cachec.passes.infra import build_module, eliminate_dead_code
from cachec.program import Segment


def _is_symint(node: fx.Node) -> bool:
    return isinstance(node.meta.get("val"), torch.SymInt)


def split(gm: fx.GraphModule, order: list[str], output_name: str) -> dict[str, Segment]:
    """Cut a tagged graph (see :class:`~passes.assign_segments.AssignSegments`) into segments.

    Parameters become attributes of the one segment that uses them (they are shared tensors,
    not copies). A batch size (SymInt) needed across a boundary is re-read from a tensor input
    of the consuming segment instead of being passed, so segment interfaces are tensors only.
    """
    members: dict[str, list[fx.Node]] = {s: [] for s in order}
    for n in gm.graph.nodes:
        if n.op == "call_function":
            seg = n.meta[SEGMENT_KEY]
            if seg not in members:
                raise ModelError(f"node {n.name} is tagged with unknown segment {seg!r}")
            members[seg].append(n)
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    final = out_node.args[0][0]
    owner: dict[str, str] = {}
    segments: dict[str, Segment] = {}
    for seg in order:
        nodes = members[seg]
        if not nodes:
            continue
        inside = set(nodes)
        for a in {a for n in nodes for a in n.all_input_nodes if a.op == "get_attr"}:
            prev = owner.setdefault(str(a.target), seg)
            if prev != seg:
                raise ModelError(f"parameter {a.target} is used by segments {prev} and {seg}")
        outputs = [n for n in nodes if n is final or any(u not in inside and u.op != "output" for u in n.users)]
        outputs = [(output_name if n is final else n.name, n) for n in outputs if not _is_symint(n)]
        segments[seg] = Segment(seg, _subgraph(gm, nodes, outputs, seg))
    return segments


def split_segment(seg: Segment, needed: set[str], rest_name: str) -> tuple[Segment, Segment | None]:
    """Cut ``seg`` in two: what computes the values in ``needed``, and everything else.

    ``needed`` names outputs of the segment or inner values (node names): DeepCache cuts a segment
    at the deep feature it caches, which the rest of the segment then reads as an input.

    The first part keeps the segment's name and computes ``needed`` (plus whatever the second part
    reads from it); the second, ``rest_name``, computes the segment's other outputs. A weight read
    by both parts stays in the first (with the nodes that read it), so weights keep one owner. A
    batch size the second part reads is re-read from one of its own tensor inputs. Returns
    ``(seg, None)`` when nothing would move.
    """
    gm = seg.module
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    produced = dict(zip(out_node.args[0], seg.outputs, strict=True))  # node -> value name
    compute = [n for n in gm.graph.nodes if n.op == "call_function"]
    first: set[fx.Node] = set()

    def pull(node: fx.Node) -> None:
        stack = [node]
        while stack:
            n = stack.pop()
            if n.op != "call_function" or n in first:
                continue
            first.add(n)
            stack.extend(n.all_input_nodes)

    for node in compute:
        if produced.get(node) in needed or node.name in needed:  # an output, or an inner value (a cut point)
            pull(node)
    changed = True
    while changed:
        changed = False
        for n in gm.graph.nodes:
            if n.op == "get_attr":  # a weight read in the first part takes all its readers along
                users = [u for u in n.users if u.op == "call_function"]
                anchored = any(u in first for u in users)
            elif n in first and isinstance(n.meta.get("val"), (list, tuple)):
                users = list(n.users)  # a multi-output op (chunk) keeps its getitems: a tuple is no segment value
                anchored = True
            else:
                continue
            if anchored and not all(u in first for u in users):
                for u in users:
                    pull(u)
                changed = True
    rest = [n for n in compute if n not in first and not _is_symint(n)]
    if not rest:
        return seg, None
    handoff = [n for n in compute if n in first and not _is_symint(n) and any(u in rest for u in n.users)]
    head_outputs = [(produced[n], n) for n in compute if n in first and n in produced] + \
        [(n.name, n) for n in handoff if n not in produced]
    tail_outputs = [(produced[n], n) for n in compute if n in rest and n in produced]
    head = Segment(seg.name, _subgraph(gm, [n for n in compute if n in first], head_outputs, seg.name), role=seg.role)
    tail = Segment(rest_name, _subgraph(gm, rest, tail_outputs, rest_name), role=seg.role)
    return head, tail


def _subgraph(gm: fx.GraphModule, nodes: list[fx.Node], outputs: list[tuple[str, fx.Node]], name: str) -> fx.GraphModule:
    """A segment module computing ``nodes`` of ``gm``; values from outside arrive as placeholders
    named by value (a graph input keeps its name, a handed-over node its node name)."""
    inside = set(nodes)
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    attrs: dict[str, torch.Tensor] = {}
    tensors: list[fx.Node] = []
    symints: list[fx.Node] = []
    for n in nodes:
        for a in n.all_input_nodes:
            if a in inside or a in env:
                continue
            if a.op == "get_attr":
                attrs[str(a.target)] = operator.attrgetter(str(a.target))(gm)
                env[a] = graph.get_attr(str(a.target))
                env[a].meta = dict(a.meta)
            elif _is_symint(a):
                symints.append(a)
                env[a] = None
            else:
                ph = graph.placeholder(a.name)
                ph.meta = dict(a.meta)
                env[a] = ph
                tensors.append(ph)
    for a in symints:
        env[a] = rematerialise(graph, a, tensors)
    for n in nodes:
        env[n] = graph.node_copy(n, env.__getitem__)
    graph.output(tuple(env[n] for _, n in outputs))
    eliminate_dead_code(graph)  # a size computed only for later segments: they re-read it themselves
    return build_module(attrs, graph, f"Segment_{name}", [value for value, _ in outputs])


def rematerialise(graph: fx.Graph, sym: fx.Node, tensors: list[fx.Node]) -> fx.Node:
    """Re-read a SymInt (the batch size) from a tensor placeholder that has it as a dimension."""
    want = str(sym.meta["val"])
    scaled = []  # (tensor, dim, p, q): a dimension the size is p/q of (frames folded into the batch)
    for t in tensors:
        val = t.meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        for dim, d in enumerate(val.shape):
            if str(d) == want:
                with graph.inserting_after(t):
                    node = graph.call_function(torch.ops.aten.sym_size.int, (t, dim))
                node.meta["val"] = sym.meta["val"]
                return node
            ratio = _ratio(sym.meta["val"], d)
            if ratio is not None:
                scaled.append((t, dim, *ratio))
    if scaled:
        t, dim, p, q = scaled[0]
        with graph.inserting_after(t):
            size = graph.call_function(torch.ops.aten.sym_size.int, (t, dim))
        size.meta["val"] = t.meta["val"].shape[dim]
        if p != 1:
            with graph.inserting_after(size):
                size = graph.call_function(operator.mul, (size, p))
            size.meta["val"] = t.meta["val"].shape[dim] * p
        with graph.inserting_after(size):
            node = graph.call_function(operator.floordiv, (size, q))
        node.meta["val"] = sym.meta["val"]
        return node
    expr = getattr(getattr(sym.meta["val"], "node", None), "expr", None)
    if expr is not None and any(str(s).startswith("u") for s in expr.free_symbols):
        raise ModelError(f"a data-dependent size ({want}: computed from an input's values, e.g. from an attention "
                         "mask) crosses a boundary between cacheable regions, which cachec cannot split there")
    raise ModelError(f"segment boundary carries the size {want}, which no tensor input of the segment has")


def _ratio(size, dim) -> tuple[int, int] | None:
    """``(p, q)`` when the symbolic ``size`` is ``p/q`` times the symbolic dimension ``dim``."""
    try:
        r = size.node.expr / dim.node.expr
    except AttributeError:
        return None
    if not r.is_Rational or r <= 0:
        return None
    return int(r.p), int(r.q)
