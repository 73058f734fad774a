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


def _block_of(node: fx.Node, extra: tuple[str, ...]) -> str | None:
    for fqn, _cls in module_path(node):
        if _NUMBERED.match(fqn) or fqn in extra:
            return fqn
    return None


def find_blocks(gm: fx.GraphModule) -> list[str]:
    """Block fqns in the order the graph first runs them (stream nodes only).

    A block is composite: a numbered child that is a single layer (``nn.Sequential(Linear, SiLU,
    Linear)``'s ``proj.0``, a text projection) is not a block, however numbered.
    """
    extra = EXTRA_BLOCKS
    blocks: list[str] = []
    composite: set[str] = set()
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.meta.get(COND_KEY):
            continue
        b = _block_of(node, extra)
        if b is not None and b not in blocks:
            blocks.append(b)
        if b is not None and any(fqn.startswith(b + ".") for fqn, _ in module_path(node)):
            composite.add(b)
    return [b for b in blocks if b in composite]


def block_class(gm: fx.GraphModule, block: str) -> str:
    for node in gm.graph.nodes:
        for fqn, cls in module_path(node):
            if fqn == block:
                return cls
    return ""


def node_block(node: fx.Node, blocks: list[str]) -> int | None:
    b = _block_of(node, EXTRA_BLOCKS)
    return blocks.index(b) if b in blocks else None


def _children(gm: fx.GraphModule, block: str) -> dict[str, str]:
    """Direct child modules of a block that appear in the graph: child fqn → class."""
    kids: dict[str, str] = {}
    depth = block.count(".") + 1
    for node in gm.graph.nodes:
        for fqn, cls in module_path(node):
            if fqn.startswith(block + ".") and fqn.count(".") == depth:
                kids.setdefault(fqn, cls)
    return kids


def _attention_like(gm: fx.GraphModule, block: str) -> dict[str, str]:
    """Attention and feed-forward descendants of a block (outermost only): fqn → class."""
    found: dict[str, str] = {}
    for node in gm.graph.nodes:
        for fqn, cls in module_path(node):
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


def _child_nodes(gm: fx.GraphModule, block: str) -> dict[str, list[fx.Node]]:
    """Stream nodes of a block grouped by the block's direct child that computes them."""
    kids: dict[str, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.meta.get(COND_KEY):
            continue
        for fqn, _cls in module_path(node):
            if fqn.startswith(block + "."):
                kids.setdefault(_child_of(block, fqn), []).append(node)
                break
    return kids


def _region_nodes(gm: fx.GraphModule, modules: tuple[str, ...], feeders: bool = False) -> list[fx.Node]:
    """Stream nodes inside ``modules`` plus the nodes on paths between them (their convex hull).

    A single module needs the hull too when its output projection runs on a mix of its result and
    another's (LuminaNext's ``attn2.to_out`` after the gated sum with ``attn1``): the region must
    be closed under paths that leave it and come back, or it could not be one segment.

    ``feeders`` (parallel blocks) also takes the nodes between the first and last module node that
    only the region reads: HunyuanVideo's single block slices the normalised stream into image and
    text tokens for its attention *after* its MLP branch began, and those slices, needed by nothing
    else, would otherwise cut the region in two.
    """
    inside = [
        n
        for n in gm.graph.nodes
        if n.op == "call_function"
        and not n.meta.get(COND_KEY)
        and any(fqn == m or fqn.startswith(m + ".") for fqn, _ in module_path(n) for m in modules)
    ]
    if not inside:
        return inside
    member = set(inside)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    lo, hi = min(order[n] for n in inside), max(order[n] for n in inside)
    # forward reachability from region nodes within [lo, hi], then keep those that reach a region node
    reach_fwd = set(inside)
    for n in gm.graph.nodes:
        if lo <= order[n] <= hi and n.op == "call_function" and any(a in reach_fwd for a in n.all_input_nodes):
            reach_fwd.add(n)
    reach_back = set(inside)
    for n in reversed(list(gm.graph.nodes)):
        if lo <= order[n] <= hi and any(u in reach_back for u in n.users):
            reach_back.add(n)
    hull = (reach_fwd & reach_back) | member
    if feeders:
        for n in reversed(list(gm.graph.nodes)):
            if (lo <= order[n] <= hi and n not in hull and n.op == "call_function" and not n.meta.get(COND_KEY)
                    and n.users and all(u in hull for u in n.users)):
                hull.add(n)
    return [n for n in gm.graph.nodes if n in hull]


def module_regions(
    gm: fx.GraphModule, blocks: list[str], cross_attention: set[str] | None = None
) -> list[Region]:
    """Attention / cross-attention / MLP regions of every block.

    ``cross_attention`` is the set of attention fqns the capture step found to be cross-attention
    (keys and values that do not depend on the latent, :func:`cachec.structure.cross_attention`);
    without it (an artifact of an older cachec), ``attn2`` is assumed to be.
    """
    from .structure import parallel_branches

    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    regions: list[Region] = []
    for bi, block in enumerate(blocks):
        found = _attention_like(gm, block)
        children = _child_nodes(gm, block)
        attention = [_child_of(block, f) for f, c in found.items() if "Attention" in c]
        parallel = parallel_branches(block, children, [a for a in attention if a], order)
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
            nodes = _region_nodes(gm, mods, feeders)
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
