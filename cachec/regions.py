"""Regions: where a denoiser can be cached, found from the module hierarchy of the exported graph.

Every FX node produced by ``torch.export`` carries ``meta["nn_module_stack"]`` (fqn → class).
Blocks are the top-level numbered children (``transformer_blocks.3``,
``single_transformer_blocks.0``, ``blocks.12``, ``down_blocks.1``) in the order the graph first
runs them; inside a block, attention and feed-forward children are the module regions. No model
table is needed for that; the only declared fallback is ``mid_block`` (U-Nets), a block that is
not numbered. A *parallel* block (attention and MLP branches from one normalised input, meeting
in one projection, as in FLUX's single-stream blocks) is found from the graph
(:func:`cachec.structure.parallel_branches`); its cacheable unit is the fused
``attn ∥ mlp → proj`` output (as TaylorSeer caches it).

A region's *outputs* are its nodes that are used outside it; a region's *inputs* are the nodes
outside it that it reads. Replacing the outputs with cache reads and removing dead code is all a
module-level reuse needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import fx

from cachec.graph_keys import COND_KEY

# capture wraps the model in a module whose only child has this name; fqns are reported without it
WRAPPER = "denoiser"
KINDS = ("step", "block", "attn", "cross_attn", "mlp")

_NUMBERED = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\.(\d+)$")
# Declared fallback (see module docstring): unnumbered blocks.
EXTRA_BLOCKS = ("mid_block",)
_MLP_NAMES = {"ff", "ff_context", "ffn", "mlp"}


@dataclass
class Region:
    """A cacheable piece of the graph.

    ``kind`` is one of :data:`KINDS`; ``name`` is the module fqn (or a range name); ``block`` the
    index of the block it lives in; ``inputs``/``outputs`` are node names; ``flops`` is per sample.
    """

    kind: str
    name: str
    block: int | None
    modules: tuple[str, ...] = ()
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    flops: float = 0.0
    share: float = 0.0
    nodes: list[str] = field(default_factory=list, repr=False)
    local: str = ""  # name relative to its block, e.g. "attn1" or "attentions.0.transformer_blocks.0.ff"

    @property
    def segment(self) -> str:
        """The segment that computes this region (unique within the program)."""
        return f"b{self.block}_" + "".join(c if c.isalnum() else "_" for c in self.local)

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "block": self.block,
            "modules": list(self.modules),
            "inputs": self.inputs,
            "outputs": self.outputs,
            "flops_per_sample": self.flops,
            "share": round(self.share, 6),
        }


def normalize_fqn(fqn: str) -> str:
    """``transformer_blocks.0.attn1`` from export's or Dynamo's spelling of a module path.

    Dynamo writes ``L['self'].__dict__['_modules']['transformer_blocks'].0.attn1``.
    """
    if "L['self']" not in fqn and "[" not in fqn:
        return fqn
    s = fqn.replace("L['self']", "")
    s = re.sub(r"__dict__\['_modules'\]\['([^']*)'\]", r".\1", s)
    s = re.sub(r"_modules\['([^']*)'\]", r".\1", s)
    s = re.sub(r"\[(\d+)\]", r".\1", s)
    return re.sub(r"\.+", ".", s).strip(".")


def module_path(node: fx.Node) -> list[tuple[str, str]]:
    """The (fqn, class name) stack of a node, outermost first."""
    stack = node.meta.get("nn_module_stack") or {}
    out = []
    for fqn, cls in stack.values():
        fqn = normalize_fqn(fqn)
        if fqn == WRAPPER or not fqn:
            continue
        if fqn.startswith(WRAPPER + "."):
            fqn = fqn[len(WRAPPER) + 1 :]
        cls_name = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
        out.append((fqn, cls_name.rsplit(".", 1)[-1]))
    return out


def _block_of(path: list[tuple[str, str]], extra: tuple[str, ...]) -> str | None:
    for fqn, _cls in path:
        if _NUMBERED.match(fqn) or fqn in extra:
            return fqn
    return None


class ModuleIndex:
    """The module hierarchy of a graph, read once: each node's module path and each module's nodes.

    Reading a node's module path normalises every fqn of its ``nn_module_stack``; doing that for
    every node once per block or region made planning quadratic in depth (FLUX.1-dev's 57 blocks
    spent most of their planning time there). Everything that asks "which nodes does module ``m``
    compute" asks this index instead, and the questions about a block or a region then visit only
    that block's or region's nodes.
    """

    def __init__(self, gm: fx.GraphModule):
        self.nodes: list[fx.Node] = list(gm.graph.nodes)
        self.position: dict[fx.Node, int] = {n: i for i, n in enumerate(self.nodes)}
        self.paths: dict[fx.Node, list[tuple[str, str]]] = {n: module_path(n) for n in self.nodes}
        self._within: dict[str, list[fx.Node]] = {}
        for n in self.nodes:
            modules: set[str] = set()  # every module the node is inside: each fqn of its path and their parents
            for fqn, _cls in self.paths[n]:
                parts = fqn.split(".")
                modules.update(".".join(parts[:k]) for k in range(1, len(parts) + 1))
            for m in modules:
                self._within.setdefault(m, []).append(n)

    def within(self, module: str) -> list[fx.Node]:
        """The nodes computed inside ``module`` (in it or in one of its descendants), in graph order."""
        return self._within.get(module, [])

    def stream_nodes_within(self, modules: tuple[str, ...]) -> list[fx.Node]:
        """Stream (not conditioning) call nodes inside any of ``modules``, in graph order."""
        found = {n for m in modules for n in self.within(m) if n.op == "call_function" and not n.meta.get(COND_KEY)}
        return sorted(found, key=self.position.__getitem__)


def find_blocks(index: ModuleIndex) -> list[str]:
    """Block fqns in the order the graph first runs them (stream nodes only).

    A block is composite: a numbered child that is a single layer (``nn.Sequential(Linear, SiLU,
    Linear)``'s ``proj.0``, a text projection) is not a block, however numbered.
    """
    blocks: dict[str, None] = {}
    composite: set[str] = set()
    for node in index.nodes:
        if node.op != "call_function" or node.meta.get(COND_KEY):
            continue
        path = index.paths[node]
        b = _block_of(path, EXTRA_BLOCKS)
        if b is None:
            continue
        blocks.setdefault(b)
        if any(fqn.startswith(b + ".") for fqn, _ in path):
            composite.add(b)
    return [b for b in blocks if b in composite]


def node_block(node: fx.Node, blocks: dict[str, int]) -> int | None:
    """The index of the block (fqn → index) that computes ``node``, or None outside every block."""
    b = _block_of(module_path(node), EXTRA_BLOCKS)
    return blocks.get(b) if b is not None else None


def _attention_like(index: ModuleIndex, block: str) -> dict[str, str]:
    """Attention and feed-forward descendants of a block (outermost only): fqn → class."""
    found: dict[str, str] = {}
    for node in index.within(block):
        for fqn, cls in index.paths[node]:
            if not fqn.startswith(block + "."):
                continue
            leaf = fqn.rsplit(".", 1)[-1]
            is_attn = "Attention" in cls and "Processor" not in cls
            is_mlp = "FeedForward" in cls or leaf in _MLP_NAMES
            if (is_attn or is_mlp) and not any(fqn.startswith(f + ".") for f in found):
                found.setdefault(fqn, cls)
                break
    return found


def _child_of(block: str, fqn: str) -> str:
    """The direct child of ``block`` that contains ``fqn``."""
    return ".".join(fqn.split(".")[: block.count(".") + 2])


def _child_nodes(index: ModuleIndex, block: str) -> dict[str, list[fx.Node]]:
    """Stream nodes of a block grouped by the block's direct child that computes them."""
    kids: dict[str, list[fx.Node]] = {}
    for node in index.within(block):
        if node.op != "call_function" or node.meta.get(COND_KEY):
            continue
        for fqn, _cls in index.paths[node]:
            if fqn.startswith(block + "."):
                kids.setdefault(_child_of(block, fqn), []).append(node)
                break
    return kids


def _region_nodes(index: ModuleIndex, modules: tuple[str, ...], feeders: bool = False) -> list[fx.Node]:
    """Stream nodes inside ``modules`` plus the nodes on paths between them (their convex hull).

    A single module needs the hull too when its output projection runs on a mix of its result and
    another's (LuminaNext's ``attn2.to_out`` after the gated sum with ``attn1``): the region must
    be closed under paths that leave it and come back, or it could not be one segment.

    ``feeders`` (parallel blocks) also takes the nodes between the first and last module node that
    only the region reads: HunyuanVideo's single block slices the normalised stream into image and
    text tokens for its attention *after* its MLP branch began, and those slices, needed by nothing
    else, would otherwise cut the region in two.

    Only the nodes between the region's first and last node are visited (the hull lies there).
    """
    inside = index.stream_nodes_within(modules)
    if not inside:
        return inside
    member = set(inside)
    span = index.nodes[index.position[inside[0]] : index.position[inside[-1]] + 1]
    # forward reachability from region nodes within the span, then keep those that reach a region node
    reach_fwd = set(inside)
    for n in span:
        if n.op == "call_function" and any(a in reach_fwd for a in n.all_input_nodes):
            reach_fwd.add(n)
    reach_back = set(inside)
    for n in reversed(span):
        if any(u in reach_back for u in n.users):
            reach_back.add(n)
    hull = (reach_fwd & reach_back) | member
    if feeders:
        for n in reversed(span):
            if (n not in hull and n.op == "call_function" and not n.meta.get(COND_KEY)
                    and n.users and all(u in hull for u in n.users)):
                hull.add(n)
    return [n for n in span if n in hull]


def module_regions(
    index: ModuleIndex, blocks: list[str], cross_attention: set[str] | None = None
) -> list[Region]:
    """Attention / cross-attention / MLP regions of every block.

    ``cross_attention`` is the set of attention fqns the capture step found to be cross-attention
    (keys and values that do not depend on the latent, :func:`cachec.structure.cross_attention`);
    without it (an artifact of an older cachec), ``attn2`` is assumed to be.
    """
    from .structure import parallel_branches

    regions: list[Region] = []
    for bi, block in enumerate(blocks):
        found = _attention_like(index, block)
        children = _child_nodes(index, block)
        attention = [_child_of(block, f) for f, c in found.items() if "Attention" in c]
        parallel = parallel_branches(block, children, [a for a in attention if a], index.position)
        if parallel is not None:
            groups = [("mlp", f"{block}.parallel", parallel, True)]
        else:
            groups = []
            for fqn, kcls in found.items():
                leaf = fqn.rsplit(".", 1)[-1]
                if "Attention" in kcls:
                    is_cross = (fqn in cross_attention) if cross_attention is not None else leaf == "attn2"
                    kind = "cross_attn" if is_cross else "attn"
                else:
                    kind = "mlp"
                groups.append((kind, fqn, (fqn,), False))
        for kind, name, mods, feeders in groups:
            nodes = _region_nodes(index, mods, feeders)
            if not nodes:
                continue
            member = set(nodes)
            outputs = [n.name for n in nodes if any(u not in member for u in n.users)]
            inputs = []
            for n in nodes:
                for a in n.all_input_nodes:
                    if a not in member and a.op != "get_attr" and a.name not in inputs:
                        inputs.append(a.name)
            regions.append(Region(kind, name, bi, mods, inputs, outputs, nodes=[n.name for n in nodes],
                                  local=name[len(block) + 1 :]))
    return regions
