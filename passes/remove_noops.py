"""Remove operations that do nothing at the exported shapes.

``x.squeeze(1)`` on a dimension that is not 1 is a no-op in PyTorch (PixArt's final layer does
this), but exporters translate it to ONNX ``Squeeze``, which rejects such a dimension; dropout
in eval mode is an identity that still costs a node in every backend. Both are replaced by their
input, decided from the static shapes that export recorded.
"""

from __future__ import annotations

import torch
from torch import fx

from .infra import Pass, PassError, PassResult, dead_values, eliminate_dead_code

aten = torch.ops.aten


def _is_noop(node: fx.Node) -> bool:
    if node.op != "call_function":
        return False
    if node.target is aten.dropout.default:
        return len(node.args) >= 3 and node.args[2] is False
    if node.target in (aten.squeeze.dim, aten.squeeze.dims):
        val = node.args[0].meta.get("val") if isinstance(node.args[0], fx.Node) else None
        if val is None:
            return False
        dims = node.args[1] if isinstance(node.args[1], (list, tuple)) else [node.args[1]]
        return all(isinstance(val.shape[d], int) and val.shape[d] != 1 for d in dims)
    return False


class RemoveNoOps(Pass):
    """Replace no-ops by their input, then drop the values that leaves unused.

    Ensures: no no-op and no dead value remains (a dead ``linear → gelu`` chain would otherwise
    become a region segment without outputs, which crashed forecast planning with an IndexError).
    """

    def call(self, gm: fx.GraphModule) -> PassResult:
        removed = 0
        for node in list(gm.graph.nodes):
            if _is_noop(node):
                node.replace_all_uses_with(node.args[0])
                gm.graph.erase_node(node)
                removed += 1
        before = len(gm.graph.nodes)
        eliminate_dead_code(gm.graph)
        removed += before - len(gm.graph.nodes)
        return PassResult(gm, removed > 0)

    def ensures(self, gm: fx.GraphModule) -> None:
        left = [n.name for n in gm.graph.nodes if _is_noop(n)] + [n.name for n in dead_values(gm)]
        if left:
            raise PassError(f"no-ops or dead values left: {', '.join(left[:5])}")
