"""Weightless segments for step- and block-range caching: residual-delta write and apply.

Δ-Cache: for a range of blocks with inputs ``x`` and outputs ``y``, the full path stores
``delta = y − x`` and the cached path computes ``y = x + delta`` with the *current* ``x``.
Outputs with no residual partner (U-Net skip features, say) are cached raw: ``y = cached``
(DeepCache style). These graphs hold no parameters, which is what keeps weights unduplicated
when the cached path replaces a block range.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from cachec.graph_keys import OUTPUTS_KEY

aten = torch.ops.aten


@dataclass
class StreamPair:
    """An output of a range, the input it is a residual of (None: raw reuse), and its cache."""

    output: str
    base: str | None
    cache: str


def _placeholder(graph: fx.Graph, name: str, meta: dict[str, object]) -> fx.Node:
    ph = graph.placeholder(name)
    if name in meta:
        ph.meta["val"] = meta[name]
    return ph


def _binary(graph: fx.Graph, op, a: fx.Node, b: fx.Node) -> fx.Node:
    node = graph.call_function(op, (a, b))
    if "val" in a.meta:
        node.meta["val"] = a.meta["val"]
    return node


def _module(graph: fx.Graph, outputs: list[tuple[str, fx.Node]], name: str) -> fx.GraphModule:
    graph.output(tuple(n for _, n in outputs))
    gm = fx.GraphModule({}, graph, class_name=name).eval()
    gm.meta[OUTPUTS_KEY] = [k for k, _ in outputs]
    return gm


def delta_write(pairs: list[StreamPair], meta: dict[str, object]) -> fx.GraphModule:
    """``cache = output − base`` (or ``cache = output`` for raw pairs)."""
    g = fx.Graph()
    ph = {}
    for p in pairs:
        for name in (p.output, p.base):
            if name is not None and name not in ph:
                ph[name] = _placeholder(g, name, meta)
    outs = []
    for p in pairs:
        val = ph[p.output] if p.base is None else _binary(g, aten.sub.Tensor, ph[p.output], ph[p.base])
        if p.base is None:
            val = g.call_function(aten.clone.default, (val,))
            val.meta["val"] = meta.get(p.output)
        outs.append((p.cache, val))
    return _module(g, outs, "DeltaWrite")


def delta_apply(pairs: list[StreamPair], meta: dict[str, object]) -> fx.GraphModule:
    """``output = base + cache`` (or ``output = cache``): the cached range, in one add per stream."""
    g = fx.Graph()
    ph = {}
    for p in pairs:
        for name in (p.base, p.cache):
            if name is not None and name not in ph:
                ph[name] = _placeholder(g, name, meta)
    outs = []
    for p in pairs:
        if p.base is None:
            val = g.call_function(aten.clone.default, (ph[p.cache],))
            val.meta["val"] = meta.get(p.cache)
        else:
            val = _binary(g, aten.add.Tensor, ph[p.base], ph[p.cache])
        outs.append((p.output, val))
    return _module(g, outs, "DeltaApply")


def copy_values(copies: dict[str, str], meta: dict[str, object]) -> fx.GraphModule:
    """``dst = src`` for each pair: commits a probe's reference into its cache on full steps."""
    g = fx.Graph()
    outs = []
    for src, dst in copies.items():
        ph = _placeholder(g, src, meta)
        node = g.call_function(aten.clone.default, (ph,))
        node.meta["val"] = meta.get(src)
        outs.append((dst, node))
    return _module(g, outs, "Commit")


def linear_mix(groups: list[tuple[list[str], list[str]]], coefficients: str, meta: dict[str, object]) -> fx.GraphModule:
    """``out_j = Σ_i C[j, i] · in_i`` for every group ``(inputs, outputs)``, one ``C`` for all groups.

    The forecast segment of TaylorSeer / HiCache / FoCa (see :mod:`cachec.forecast`): the method
    lives in the runtime-supplied coefficient matrix ``C``, so the same weightless graph serves
    every method and every step, and exports to ONNX unchanged.

    Each group is one matrix product: its inputs are stacked into ``[n_in, -1]`` and ``C @ X``
    gives every output at once — two kernels (``cat``, ``mm``) per stream instead of a multiply
    and an add per coefficient, which made a TaylorSeer full step launch almost twice the model's
    kernels. ``C`` has the streams' dtype (the planner makes it so), so a bf16 model mixes in bf16
    with fp32 accumulation. A stream with more than one symbolic dimension, which a flat view
    cannot rebuild, keeps the per-coefficient form.
    """
    g = fx.Graph()
    ph: dict[str, fx.Node] = {}
    for inputs, _ in groups:
        for name in inputs:
            if name not in ph:
                ph[name] = _placeholder(g, name, meta)
    coeff = _placeholder(g, coefficients, meta)
    outs = []
    for inputs, outputs in groups:
        shape = _flat_view_shape(meta.get(inputs[0]))
        if shape is None:
            outs.extend(_mix_by_terms(g, ph, coeff, inputs, outputs, meta[coefficients]))
            continue
        stacked = g.call_function(aten.cat.default, ([g.call_function(aten.unsqueeze.default, (ph[n], 0))
                                                      for n in inputs], 0))
        flat = g.call_function(aten.view.default, (stacked, [len(inputs), -1]))
        rows = coeff
        if meta[coefficients].shape[0] != len(outputs) or meta[coefficients].shape[1] != len(inputs):
            rows = g.call_function(aten.slice.Tensor, (coeff, 0, 0, len(outputs)))
            rows = g.call_function(aten.slice.Tensor, (rows, 1, 0, len(inputs)))
        mixed = g.call_function(aten.mm.default, (rows, flat))
        for j, out_name in enumerate(outputs):
            row = g.call_function(aten.select.int, (mixed, 0, j))
            outs.append((out_name, g.call_function(aten.view.default, (row, shape))))
    return _module(g, outs, "LinearMix")


def _flat_view_shape(val) -> list[int] | None:
    """The stream's shape with its one symbolic dimension (the batch) as ``-1``; None if not expressible."""
    if val is None or not hasattr(val, "shape"):
        return None
    shape = [d if isinstance(d, int) else -1 for d in val.shape]
    return shape if shape.count(-1) <= 1 else None


def _mix_by_terms(g: fx.Graph, ph: dict, coeff: fx.Node, inputs: list[str], outputs: list[str], c_val) -> list:
    """``out_j = Σ_i C[j, i] · in_i`` as one multiply and one add per coefficient (any shapes)."""
    scalar = torch.empty((), dtype=getattr(c_val, "dtype", torch.float32))
    entries: dict[tuple[int, int], fx.Node] = {}

    def entry(row: int, col: int) -> fx.Node:
        if (row, col) not in entries:
            r = g.call_function(aten.select.int, (coeff, 0, row))
            r.meta["val"] = torch.empty(c_val.shape[1:], dtype=scalar.dtype)
            e = g.call_function(aten.select.int, (r, 0, col))
            e.meta["val"] = scalar
            entries[(row, col)] = e
        return entries[(row, col)]

    outs = []
    for row, out_name in enumerate(outputs):
        acc = None
        for col, name in enumerate(inputs):
            term = _binary(g, aten.mul.Tensor, ph[name], entry(row, col))
            acc = term if acc is None else _binary(g, aten.add.Tensor, acc, term)
        outs.append((out_name, acc))
    return outs
