"""Remove the scaffolding ``torch.export`` leaves in an unlifted module.

``ep.module()`` calls a ``_guards_fn`` submodule on the inputs and inserts
``aten._assert_tensor_metadata`` checks. Neither computes anything the denoiser needs, both
are side-effecting (so dead-code elimination keeps them), and both would pin segment
boundaries, so they go before anything else looks at the graph.
"""

from __future__ import annotations

import torch
from torch import fx

from .infra import Pass, PassError, PassResult, eliminate_dead_code

_ASSERT_TARGETS = {
    torch.ops.aten._assert_tensor_metadata.default,
    torch.ops.aten._assert_scalar.default,
    torch.ops.aten.sym_constrain_range_for_size.default,
}


def _is_scaffolding(node: fx.Node) -> bool:
    if node.op == "call_module" and str(node.target).startswith("_guards"):
        return True
    return node.op == "call_function" and node.target in _ASSERT_TARGETS


class StripExportArtifacts(Pass):
    def call(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        for node in list(gm.graph.nodes):
            if _is_scaffolding(node):
                gm.graph.erase_node(node)
                modified = True
        for node in list(gm.graph.nodes):
            if node.op == "placeholder" and not node.users and not isinstance(node.meta.get("val"), torch.Tensor):
                gm.graph.erase_node(node)
                modified = True
        for name, _ in list(gm.named_children()):
            if name.startswith("_guards"):
                delattr(gm, name)
        eliminate_dead_code(gm.graph)
        return PassResult(gm, modified)

    def ensures(self, gm: fx.GraphModule) -> None:
        for node in gm.graph.nodes:
            if _is_scaffolding(node):
                raise PassError(f"export scaffolding left in graph: {node.name}")
