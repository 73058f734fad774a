"""Weightless segment factories of the planner: residual deltas, forecast mixes and probes.

The small node helpers (:func:`placeholder`, :func:`computed`, :func:`graph_module`, ...) are
public: a method that builds a graph of its own (EasyCache's write, per-block caching's change)
builds it with them, next to the method.

These build *new* small graphs (they rewrite nothing, so they are not passes) from value names
and the example values in ``meta``; the planner adds them as segments between the model's own.
Each is made by :func:`~passes.infra.build_module`, which lints it once.

Δ-Cache: for a range of blocks with inputs ``x`` and outputs ``y``, the full variant stores
``delta = y − x`` and the cached variant computes ``y = x + delta`` with the *current* ``x``.
Outputs with no residual partner (U-Net skip features, say) are cached raw: ``y = cached``
(DeepCache style). These graphs hold no parameters, which is what keeps weights unduplicated
when the cached variant replaces a block range.

Probes: ``rel_l1(a, ref) = mean|a − ref| / mean|ref|`` is the distance of TeaCache (on the
modulated input of block 0) and of First-Block-Cache (on block 0's residual). A probe returns a
0-d tensor; the decision on it is made by the controller on the host, between two variants,
which is exactly where cache-dit puts its ``@torch.compiler.disable`` decision — but here the
graphs on either side stay whole and exportable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import fx

from cachec.flops import size_hint
from cachec.passes.infra import build_module
from cachec.program import per_item

aten = torch.ops.aten


@dataclass
class StreamPair:
    """An output of a range, the input it is a residual of (None: raw reuse), and its cache."""

    output: str
    base: str | None
    cache: str


def placeholder(graph: fx.Graph, name: str, meta: dict[str, object]) -> fx.Node:
    ph = graph.placeholder(name)
    if name in meta:
        ph.meta["val"] = meta[name]
    return ph


def _binary(graph: fx.Graph, op, a: fx.Node, b: fx.Node) -> fx.Node:
    node = graph.call_function(op, (a, b))
    if "val" in a.meta:
        node.meta["val"] = a.meta["val"]
    return node


def graph_module(graph: fx.Graph, outputs: list[tuple[str, fx.Node]], name: str) -> fx.GraphModule:
    """The weightless segment returning ``outputs`` (name, node), built and linted by
    :func:`~passes.infra.build_module`."""
    graph.output(tuple(n for _, n in outputs))
    return build_module({}, graph, name, [k for k, _ in outputs])


def delta_write(pairs: list[StreamPair], meta: dict[str, object]) -> fx.GraphModule:
    """``cache = output − base`` (or ``cache = output`` for raw pairs)."""
    g = fx.Graph()
    ph = {}
    for p in pairs:
        for name in (p.output, p.base):
            if name is not None and name not in ph:
                ph[name] = placeholder(g, name, meta)
    outs = []
    for p in pairs:
        val = ph[p.output] if p.base is None else _binary(g, aten.sub.Tensor, ph[p.output], ph[p.base])
        if p.base is None:
            val = g.call_function(aten.clone.default, (val,))
            val.meta["val"] = meta.get(p.output)
        outs.append((p.cache, val))
    return graph_module(g, outs, "DeltaWrite")


def delta_apply(pairs: list[StreamPair], meta: dict[str, object]) -> fx.GraphModule:
    """``output = base + cache`` (or ``output = cache``): the cached range, in one add per stream."""
    g = fx.Graph()
    ph = {}
    for p in pairs:
        for name in (p.base, p.cache):
            if name is not None and name not in ph:
                ph[name] = placeholder(g, name, meta)
    outs = []
    for p in pairs:
        if p.base is None:
            val = g.call_function(aten.clone.default, (ph[p.cache],))
            val.meta["val"] = meta.get(p.cache)
        else:
            val = _binary(g, aten.add.Tensor, ph[p.base], ph[p.cache])
        outs.append((p.output, val))
    return graph_module(g, outs, "DeltaApply")


def copy_values(copies: dict[str, str], meta: dict[str, object]) -> fx.GraphModule:
    """``dst = src`` for each pair: commits a probe's reference into its cache on full steps."""
    g = fx.Graph()
    outs = []
    for src, dst in copies.items():
        ph = placeholder(g, src, meta)
        node = g.call_function(aten.clone.default, (ph,))
        node.meta["val"] = meta.get(src)
        outs.append((dst, node))
    return graph_module(g, outs, "Commit")


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
                ph[name] = placeholder(g, name, meta)
    coeff = placeholder(g, coefficients, meta)
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
        mixed.meta["val"] = _product_shape(len(outputs), meta.get(inputs[0]))
        if rows is not coeff:
            rows.meta["val"] = torch.empty((len(outputs), len(inputs)), device="meta")
        for j, out_name in enumerate(outputs):
            row = g.call_function(aten.select.int, (mixed, 0, j))
            outs.append((out_name, g.call_function(aten.view.default, (row, shape))))
    return graph_module(g, outs, "LinearMix")


def _product_shape(rows: int, stream) -> torch.Tensor:
    """The shape of a mix's ``C @ X`` (``[outputs, stream elements]``, on the meta device): with it
    :func:`cachec.flops.node_flops` counts the product (``2 · outputs · inputs`` FLOPs per stream
    element), so a forecast step's NFE includes what its forecast costs."""
    return torch.empty((rows, math.prod(size_hint(d) for d in stream.shape)), device="meta")


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


def computed(graph: fx.Graph, op, args, example) -> fx.Node:
    node = graph.call_function(op, args)
    node.meta["val"] = example
    return node


def item_means(g: fx.Graph, x: fx.Node, example, batch_dim: int) -> fx.Node:
    """``mean`` of ``x`` over every dimension but the batch one: one value per batch item.

    Per-sample decisions (:class:`cachec.methods.base.PerSample`) read these instead of the
    batch-wide mean: an item's signal then depends on that item alone, so its decisions are the
    ones it would take run alone.
    """
    dims = [d for d in range(example.dim()) if d != batch_dim]
    return computed(g, aten.mean.dim, (x, dims), example.abs().mean(dims))


def rel_l1_probe(
    current: str,
    reference: str,
    signal: str,
    meta: dict[str, object],
    *,
    residual_of: str | None = None,
    emit_current_as: str | None = None,
    batch_dim: int | None = None,
) -> fx.GraphModule:
    """Signal ``mean|x − ref| / mean|ref|`` with ``x = current`` (or ``current − residual_of``).

    ``emit_current_as`` also returns ``x`` under that name (TeaCache stores ``m_t`` every step;
    FBCache hands ``r1`` to the commit segment of full steps). With ``batch_dim`` the probe also
    returns the signal of each batch item (:func:`cachec.program.per_item`), the means taken over
    that item's elements only.
    """
    g = fx.Graph()
    cur = g.placeholder(current)
    cur.meta["val"] = meta.get(current)
    x = cur
    if residual_of is not None:
        base = g.placeholder(residual_of)
        base.meta["val"] = meta.get(residual_of)
        x = computed(g, aten.sub.Tensor, (cur, base), meta.get(current))
    ref = g.placeholder(reference)
    ref.meta["val"] = meta.get(reference)
    zero = torch.empty(())
    diff = computed(g, aten.sub.Tensor, (x, ref), meta.get(current))
    num = computed(g, aten.mean.default, (computed(g, aten.abs.default, (diff,), meta.get(current)),), zero)
    den = computed(g, aten.mean.default, (computed(g, aten.abs.default, (ref,), meta.get(current)),), zero)
    rel = computed(g, aten.div.Tensor, (num, den), zero)
    outs = [(signal, rel)]
    if batch_dim is not None:
        example = meta.get(current)
        num_i = item_means(g, num.args[0], example, batch_dim)
        den_i = item_means(g, den.args[0], example, batch_dim)
        outs.append((per_item(signal), computed(g, aten.div.Tensor, (num_i, den_i), num_i.meta["val"])))
    if emit_current_as is not None:
        outs.append((emit_current_as, x if x is not cur else computed(g, aten.clone.default, (cur,), meta.get(current))))
    return graph_module(g, outs, "RelL1Probe")


def mean_abs(g: fx.Graph, x: fx.Node, example) -> fx.Node:
    return computed(g, aten.mean.default, (computed(g, aten.abs.default, (x,), example),), torch.empty(()))


# ---------------------------------------------------------------------------------------------
# a segment traced from a Python function (a method's own tensor maths: FFT bands, a DCT, an error)

def traced(fn, inputs: list[tuple[str, torch.Tensor]], outputs: list[str], name: str) -> fx.GraphModule:
    """``fn`` as a segment graph: traced with symbolic shapes (any batch), placeholders named after
    the values they read, ``OUTPUTS_KEY`` naming what it returns."""
    from torch.fx.experimental.proxy_tensor import make_fx

    # distinct tensors: make_fx maps one tensor object passed twice to one placeholder
    made = make_fx(fn, tracing_mode="symbolic")(*(v.clone() for _, v in inputs))
    g = fx.Graph()
    env = {}
    placeholders = [n for n in made.graph.nodes if n.op == "placeholder"]
    for node, (value, _) in zip(placeholders, inputs, strict=True):
        env[node] = g.placeholder(value)  # first, so that the value names win over the graph's own
        env[node].meta = dict(node.meta)
    for node in made.graph.nodes:
        if node.op == "output":
            g.output(fx.graph.map_arg(node.args[0], env.__getitem__))
        elif node.op != "placeholder":
            env[node] = g.node_copy(node, env.__getitem__)
    return build_module(made, g, name, list(outputs))


def example(val, dtype=None) -> torch.Tensor:
    """A real tensor like the example value ``val`` at batch 4 (no size of 1 that tracing could
    specialise; for a CFG batch, two pairs), for :func:`traced`."""
    return torch.zeros([4, *(int(d) for d in val.shape[1:])], dtype=dtype or val.dtype)
