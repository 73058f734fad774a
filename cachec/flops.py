"""FLOPs counted from the graph's shapes, per batch item.

Diffusion transformers spend nearly all their time in matmuls, convolutions and attention, so
those are what we count (2 FLOPs per multiply-accumulate), the same convention as the DuCa and
ToCa tables. Element-wise ops are ignored. Shapes come from ``meta["val"]`` that export attached
to every node; the batch dimension is symbolic there, so we evaluate it at its example value and
divide by the example batch — FLOPs of these ops are linear in the batch.
"""

from __future__ import annotations

import math

import torch
from torch import fx

aten = torch.ops.aten


def _shape(x) -> list[int]:
    val = x.meta.get("val") if isinstance(x, fx.Node) else x
    if val is None or not hasattr(val, "shape"):
        return []
    return [size_hint(d) for d in val.shape]


def size_hint(d) -> int:
    """A dimension's size at the example shapes (a symbolic batch at its example value)."""
    if isinstance(d, int):
        return d
    node = getattr(d, "node", None)
    hint = getattr(node, "hint", None)
    if hint is not None:
        return int(hint)
    return int(d)


def node_flops(node: fx.Node) -> float:
    """FLOPs of one node at its example shapes (0 for ops we do not count)."""
    if node.op != "call_function":
        return 0.0
    t = node.target
    out = _shape(node)
    if not out:  # no recorded shape: a weightless op cachec built itself (a probe, a copy), not counted
        return 0.0
    if t is aten.linear.default:
        w = _shape(node.args[1])
        return 2.0 * math.prod(out) * w[1]
    # aten._int_mm: an int8 matmul (torchao's dynamic int8 linears); its multiply-adds count as any other
    if t in (aten.mm.default, aten.bmm.default, aten.matmul.default, aten.addmm.default, aten.baddbmm.default,
             aten._int_mm.default):
        a = node.args[1] if t in (aten.addmm.default, aten.baddbmm.default) else node.args[0]
        k = _shape(a)[-1]
        return 2.0 * math.prod(out) * k
    if t in (aten.conv2d.default, aten.conv3d.default, aten.conv1d.default, aten.convolution.default):
        w = _shape(node.args[1])
        groups = node.args[-1] if t is aten.convolution.default else (node.args[6] if len(node.args) > 6 else 1)
        return 2.0 * math.prod(out) * math.prod(w[1:]) * (1 if isinstance(groups, int) else 1)
    if t in (aten.scaled_dot_product_attention.default, aten._scaled_dot_product_flash_attention.default,
             aten._scaled_dot_product_efficient_attention.default):
        q, k = _shape(node.args[0]), _shape(node.args[1])
        # QK^T and AV: 2 * (2 * B*H*Lq*Lk*D)
        return 4.0 * math.prod(q[:-1]) * k[-2] * q[-1]
    return 0.0


def graph_flops(gm: fx.GraphModule, batch: int) -> float:
    """Per-sample FLOPs of a graph whose example shapes were taken at batch size ``batch``."""
    return sum(node_flops(n) for n in gm.graph.nodes) / max(batch, 1)


def propagate(gm: fx.GraphModule, example: dict, shapes: dict[str, tuple] | None = None) -> None:
    """Set ``meta["val"]`` of every node from fake inputs at batch 1 (``shapes`` overrides a placeholder's shape).

    ``example`` maps placeholder names to tensors (or export's fake values) giving dtype and trailing dims.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    args = []
    for n in gm.graph.nodes:
        if n.op != "placeholder":
            continue
        v = example[n.name]
        shape = (shapes or {}).get(n.name) or (1, *(int(d) for d in v.shape[1:]))
        args.append(mode.from_tensor(torch.zeros(shape, dtype=v.dtype)))
    FakeTensorProp(gm, mode).propagate_dont_convert_inputs(*args)


def flops_in_tokens(gm: fx.GraphModule, example: dict, index: str, n_tokens: int) -> tuple[float, float]:
    """Per-sample FLOPs of a token variant as ``fixed + per_token * k``, counted from its shapes.

    The graph's shapes are propagated (fake tensors, batch 1) at ``k = 1`` and ``k = N``; attention
    and matmul FLOPs are linear in the number of query rows, so two points fix the line. The last
    propagation (``k = N``) leaves ``meta["val"]`` on every node.
    """
    def at(k: int) -> float:
        propagate(gm, {**example, index: torch.zeros((1, 1), dtype=torch.int64)}, {index: (1, k)})
        return graph_flops(gm, 1)

    f1, fn = at(1), at(n_tokens)
    per = (fn - f1) / (n_tokens - 1) if n_tokens > 1 else 0.0
    return f1 - per, per
