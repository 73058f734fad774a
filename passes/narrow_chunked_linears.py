"""A linear whose output is chunked, with some chunks unread, computes only the rows it needs.

adaLN-Zero blocks project the conditioning vector with one linear into six chunks (shift, scale
and gate of the attention and of the MLP) or three (FLUX's single blocks). A cached step that
reuses a block's attention and MLP still needs their *gates* (a reused output is scaled by the
current gate before it is added back), but not the shifts and scales, which only fed the skipped
modules. Once dead-code elimination has removed those modules from a variant, the linear is still
computed whole: on FLUX.1-dev that is 6.45 GB of weights read per cached step, of which the gates
need 2.15 GB. A cached step is bound by what it reads, so this pass gives each contiguous run of
live chunks a linear of its own over the matching rows of the weight (a view: no weight is
copied), and drops the rest.

Splitting one linear into *k* runs costs *k − 1* extra kernel launches. A launch costs a few
microseconds, in which an H100/H200 reads about :data:`LAUNCH_BYTES` from memory, so a run is split
off only when the bytes it saves pay for the launches it adds: FLUX's single blocks (one live
chunk, the gate) always are, its double blocks (gates 2 and 5 of 6, 75 MB saved per linear) are,
and DiT-XL/2's (10.6 MB saved per extra launch) are not.

The pass works on fused variant graphs (eager, Inductor), where each variant is specialised on
its own; segments that several variants share (ONNX Runtime, TensorRT) keep their linears whole.
"""

from __future__ import annotations

import math
import operator

import torch
from torch import fx

from .infra import Pass, PassResult

aten = torch.ops.aten

LAUNCH_BYTES = 16 * 2**20  # ≈ 4 µs of an H200's 4.8 TB/s: about what one kernel launch costs


def _param(gm: fx.GraphModule, node) -> torch.Tensor | None:
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    return operator.attrgetter(str(node.target))(gm)


def _live_runs(chunks: list[int]) -> list[tuple[int, int]]:
    """Contiguous runs ``(first, last)`` of the sorted chunk indices."""
    runs: list[tuple[int, int]] = []
    for k in chunks:
        if runs and runs[-1][1] == k - 1:
            runs[-1] = (runs[-1][0], k)
        else:
            runs.append((k, k))
    return runs


class NarrowChunkedLinears(Pass):
    """Rewrite ``linear(x, W, b).chunk(n, dim=-1)`` read at chunks K into one linear per contiguous
    run of K over ``W``'s rows of that run (views), when the bytes saved pay for the added launches.

    ``saved_flops`` (per sample, summed over rewrites) lets a fused variant report what it now runs.
    """

    def __init__(self, launch_bytes: int | None = None):
        self.launch_bytes = LAUNCH_BYTES if launch_bytes is None else launch_bytes
        self.saved_flops = 0.0

    def call(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        for node in list(gm.graph.nodes):
            if node.op == "call_function" and node.target is aten.linear.default:
                modified |= self._narrow(gm, node)
        return PassResult(gm, modified)

    def _narrow(self, gm: fx.GraphModule, linear: fx.Node) -> bool:
        x, weight_node = linear.args[0], linear.args[1]
        bias_node = linear.args[2] if len(linear.args) > 2 else linear.kwargs.get("bias")
        weight, bias = _param(gm, weight_node), _param(gm, bias_node)
        if weight is None or weight.dim() != 2 or (bias_node is not None and bias is None):
            return False
        if len(linear.users) != 1:
            return False
        (chunk,) = linear.users
        if chunk.op != "call_function" or chunk.target is not aten.chunk.default:
            return False
        pieces = chunk.args[1]
        dim = chunk.args[2] if len(chunk.args) > 2 else chunk.kwargs.get("dim", 0)
        out = linear.meta.get("val")
        x_val = x.meta.get("val") if isinstance(x, fx.Node) else None
        if out is None or x_val is None or dim % out.dim() != out.dim() - 1:
            return False  # only a split of the output features maps onto the weight's rows
        rows, width = weight.shape
        if rows % pieces:
            return False  # torch.chunk's last piece would be short
        getters = list(chunk.users)
        if not all(g.op == "call_function" and g.target is operator.getitem and isinstance(g.args[1], int)
                   for g in getters):
            return False
        live = sorted({g.args[1] % pieces for g in getters})
        runs = _live_runs(live)
        size = rows // pieces
        saved_rows = (pieces - len(live)) * size
        saved_bytes = saved_rows * width * weight.element_size()
        if saved_rows == 0 or saved_bytes < (len(runs) - 1) * self.launch_bytes:
            return False
        graph = gm.graph
        values: dict[int, fx.Node] = {}
        with graph.inserting_before(chunk):
            for first, last in runs:
                lo, hi = first * size, (last + 1) * size
                w = graph.call_function(aten.slice.Tensor, (weight_node, 0, lo, hi))
                args = (x, w) if bias_node is None else (x, w, graph.call_function(aten.slice.Tensor,
                                                                                     (bias_node, 0, lo, hi)))
                part = graph.call_function(aten.linear.default, args)
                if first == last:
                    values[first] = part
                    continue
                split = graph.call_function(aten.chunk.default, (part, last - first + 1, -1))
                for k in range(first, last + 1):
                    values[k] = graph.call_function(operator.getitem, (split, k - first))
        for g in getters:
            g.replace_all_uses_with(values[g.args[1] % pieces])
            graph.erase_node(g)
        graph.erase_node(chunk)
        graph.erase_node(linear)
        rows_per_sample = math.prod(int(d) for d in x_val.shape[1:-1])
        self.saved_flops += 2.0 * rows_per_sample * width * saved_rows
        return True
