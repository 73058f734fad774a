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


def _mean_abs(g: fx.Graph, x: fx.Node, example) -> fx.Node:
    return _scalar(g, aten.mean.default, (_scalar(g, aten.abs.default, (x,), example),), torch.empty(()))


def latent_step_probe(latent: str, previous: str, signal: str, emit_as: str, meta: dict[str, object]) -> fx.GraphModule:
    """EasyCache's input change ``mean|x − x_prev|``; also returns ``x`` (stored as the next ``x_prev``)."""
    g = fx.Graph()
    x, prev = g.placeholder(latent), g.placeholder(previous)
    x.meta["val"], prev.meta["val"] = meta.get(latent), meta.get(previous)
    d = _mean_abs(g, _scalar(g, aten.sub.Tensor, (x, prev), meta.get(latent)), meta.get(latent))
    copy = _scalar(g, aten.clone.default, (x,), meta.get(latent))
    g.output((d, copy))
    gm = fx.GraphModule({}, g, class_name="LatentStepProbe").eval()
    gm.meta[OUTPUTS_KEY] = [signal, emit_as]
    return gm


def easycache_write(latent: str, output: str, latent_full: str, output_full: str, delta: str, rate: str,
                    output_norm: str, next_latent_full: str, next_output_full: str,
                    meta: dict[str, object]) -> fx.GraphModule:
    """At an EasyCache full step: the transformation rate ``k = mean|v − v_pf| / mean|x − x_pf|``
    against the previous full step, ``mean|v|``, the new ``Δ = v − x`` and copies of ``x``, ``v``
    (``next_*``, stored as the next full step's references)."""
    g = fx.Graph()
    names = (latent, output, latent_full, output_full)
    x, v, x_pf, v_pf = (g.placeholder(n) for n in names)
    for node, n in zip((x, v, x_pf, v_pf), names, strict=True):
        node.meta["val"] = meta.get(n)
    ex = meta.get(latent)
    num = _mean_abs(g, _scalar(g, aten.sub.Tensor, (v, v_pf), ex), ex)
    den = _mean_abs(g, _scalar(g, aten.sub.Tensor, (x, x_pf), ex), ex)
    k = _scalar(g, aten.div.Tensor, (num, den), torch.empty(()))
    norm = _mean_abs(g, v, ex)
    d = _scalar(g, aten.sub.Tensor, (v, x), ex)
    outs = [(rate, k), (output_norm, norm), (delta, d),
            (next_latent_full, _scalar(g, aten.clone.default, (x,), ex)),
            (next_output_full, _scalar(g, aten.clone.default, (v,), ex))]
    g.output(tuple(n for _, n in outs))
    gm = fx.GraphModule({}, g, class_name="EasyCacheWrite").eval()
    gm.meta[OUTPUTS_KEY] = [k for k, _ in outs]
    return gm
