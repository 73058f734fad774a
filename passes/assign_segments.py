"""Tag every node with its segment: prologue, per-block glue and region segments, epilogue.

Segments are the unit of lowering and of weight ownership. Every cacheable region (an
attention, cross-attention or MLP module of a block) is a segment of its own; the rest of a
block is cut into *glue* runs between its regions (``b3_g0``: norm and modulation before the
attention, ``b3_g1``: gate and residual add after it, …). A cached path is then just a path that
skips region segments and loads their outputs from cache buffers, and it reuses the very same
glue segments as the full path — so no parameter is ever lowered twice, for any policy.

After :class:`HoistConditioning`, conditioning nodes are first and go to the prologue. Stream
nodes outside any block go to the prologue before the first block and to the epilogue after the
last block. Between two blocks they belong where the stream they compute is defined: to the
*next* block's first glue, which consumes it. A model that reshapes or concatenates its streams
between block groups (AuraFlow, Chroma: text ‖ image after the joint blocks) then keeps each
block's output a residual of its input, which probe policies (FBCache) need.
"""

from __future__ import annotations

from torch import fx

from cachec.graph_keys import COND_KEY, SEGMENT_KEY
from cachec.regions import Region, node_block

from .infra import Pass, PassError, PassResult


class AssignSegments(Pass):
    def __init__(self, blocks: list[str], regions: list[Region], region_nodes: dict[str, Region]):
        self.blocks = blocks
        self.regions = regions
        self.region_nodes = region_nodes  # node name -> region
        self.order: list[str] = []

    def requires(self, gm: fx.GraphModule) -> None:
        if not self.blocks:
            raise PassError("no blocks to segment")

    def call(self, gm: fx.GraphModule) -> PassResult:
        nodes = [n for n in gm.graph.nodes if n.op == "call_function"]
        block_index = {b: i for i, b in enumerate(self.blocks)}
        block_of = {n: (None if n.meta.get(COND_KEY) else node_block(n, block_index)) for n in nodes}
        last_block_pos = max(i for i, n in enumerate(nodes) if block_of[n] is not None)
        next_block: list[int | None] = [None] * len(nodes)  # the block of the next node that has one
        upcoming = None
        for i in range(len(nodes) - 1, -1, -1):
            next_block[i] = upcoming
            if block_of[nodes[i]] is not None:
                upcoming = block_of[nodes[i]]
        order: list[str] = []
        current, glue, in_region = -1, 0, None
        for pos, n in enumerate(nodes):
            if n.meta.get(COND_KEY):
                seg = "prologue"
            else:
                b = block_of[n]
                if b is None and pos > last_block_pos:
                    b, seg = None, "epilogue"
                elif b is None and current < 0:
                    seg = "prologue"
                else:
                    if b is None:  # between blocks: the next block's glue when the next block is another one
                        b = next_block[pos] if next_block[pos] is not None and next_block[pos] > current else current
                    if b < current:
                        raise PassError(
                            f"node {n.name} of {self.blocks[b]} runs after {self.blocks[current]}: "
                            "a module is reused out of order on the stream"
                        )
                    if b != current:
                        current, glue, in_region = b, 0, None
                    region = self.region_nodes.get(n.name)
                    if region is not None:
                        seg = region.segment
                        in_region = seg
                    else:
                        if in_region is not None:
                            glue += 1
                            in_region = None
                        seg = f"b{b}_g{glue}"
            if seg in order and order[-1] != seg and seg != "prologue":
                raise PassError(f"segment {seg} is not contiguous in graph order (at node {n.name})")
            if seg not in order:
                order.append(seg)
            n.meta[SEGMENT_KEY] = seg
        self.order = order
        return PassResult(gm, True)

    def ensures(self, gm: fx.GraphModule) -> None:
        for n in gm.graph.nodes:
            if n.op == "call_function" and SEGMENT_KEY not in n.meta:
                raise PassError(f"node {n.name} has no segment")
