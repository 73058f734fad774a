"""Weightless probe segments: the cheap signals dynamic policies threshold.

``rel_l1(a, ref) = mean|a − ref| / mean|ref|`` is the distance of TeaCache (on the modulated
input of block 0) and of First-Block-Cache (on block 0's residual). The probe returns a 0-d
tensor; the decision on it is made by the runtime on the host, between two segments, which is
exactly where cache-dit puts its ``@torch.compiler.disable`` decision — but here the graphs on
either side stay whole and exportable.
"""

from __future__ import annotations

import torch
from torch import fx

from cachec.graph_keys import OUTPUTS_KEY

aten = torch.ops.aten


def _scalar(graph: fx.Graph, op, args, example) -> fx.Node:
    node = graph.call_function(op, args)
    node.meta["val"] = example
    return node


def rel_l1_probe(
    current: str,
    reference: str,
    signal: str,
    meta: dict[str, object],
    *,
    residual_of: str | None = None,
    emit_current_as: str | None = None,
) -> fx.GraphModule:
    """Signal ``mean|x − ref| / mean|ref|`` with ``x = current`` (or ``current − residual_of``).

    ``emit_current_as`` also returns ``x`` under that name (TeaCache stores ``m_t`` every step;
    FBCache hands ``r1`` to the commit segment of full steps).
    """
    g = fx.Graph()
    cur = g.placeholder(current)
    cur.meta["val"] = meta.get(current)
    x = cur
    if residual_of is not None:
        base = g.placeholder(residual_of)
        base.meta["val"] = meta.get(residual_of)
        x = _scalar(g, aten.sub.Tensor, (cur, base), meta.get(current))
    ref = g.placeholder(reference)
    ref.meta["val"] = meta.get(reference)
    zero = torch.empty(())
    diff = _scalar(g, aten.sub.Tensor, (x, ref), meta.get(current))
    num = _scalar(g, aten.mean.default, (_scalar(g, aten.abs.default, (diff,), meta.get(current)),), zero)
    den = _scalar(g, aten.mean.default, (_scalar(g, aten.abs.default, (ref,), meta.get(current)),), zero)
    rel = _scalar(g, aten.div.Tensor, (num, den), zero)
    outs = [(signal, rel)]
    if emit_current_as is not None:
        outs.append((emit_current_as, x if x is not cur else _scalar(g, aten.clone.default, (cur,), meta.get(current))))
    g.output(tuple(n for _, n in outs))
    gm = fx.GraphModule({}, g, class_name="RelL1Probe").eval()
    gm.meta[OUTPUTS_KEY] = [k for k, _ in outs]
    return gm
