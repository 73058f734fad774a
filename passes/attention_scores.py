"""Token scores tapped from a self-attention graph, for ToCa-style token selection.

:class:`TapTokenScore` adds one output to an attention segment: a per-token score ``[B, N]``
that the runtime ranks tokens by on the next partial steps (the full path stores it in a cache).

* ``knorm`` / ``vnorm`` — the L2 norm of each token's key / value, averaged over heads. Cheap
  (element-wise on tensors the attention computes anyway) and it leaves
  ``scaled_dot_product_attention`` untouched, so flash attention stays usable.
* ``attn`` — ToCa's attention score (s1): the head-averaged attention map's column sums, i.e. how
  much attention each token *receives*, L2-normalised over tokens. This needs the attention map
  itself, which fused kernels never materialise: the SDPA node is replaced by the explicit
  ``softmax(q kᵀ · scale) v``, so this block's attention can no longer use flash attention (and
  its FLOPs include the materialised map, counted from the graph).
"""

from __future__ import annotations

import math

import torch
from torch import fx

from cachec.graph_keys import OUTPUTS_KEY

from .infra import Pass, PassError, PassResult, eliminate_dead_code

aten = torch.ops.aten
SDPA = aten.scaled_dot_product_attention.default
RULES = ("knorm", "vnorm", "attn")


class ScoreError(ValueError):
    """The graph has no single self-attention to score tokens from."""


def _add_token_score(gm: fx.GraphModule, rule: str, output: str) -> fx.GraphModule:
    """Return ``gm`` with one more output, ``output``: the score of ``rule`` for every key token."""
    if rule not in RULES:
        raise ValueError(f"unknown score rule {rule!r}; known: {', '.join(RULES)}")
    sdpa = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is SDPA]
    if len(sdpa) != 1:
        raise ScoreError(f"expected one scaled_dot_product_attention in the attention graph, found {len(sdpa)}")
    node = sdpa[0]
    q, k, v = node.args[:3]
    g = gm.graph
    out = next(n for n in g.nodes if n.op == "output")
    with g.inserting_before(out):
        if rule in ("knorm", "vnorm"):
            x = k if rule == "knorm" else v
            norm = g.call_function(aten.linalg_vector_norm.default, (x, 2, [-1]))  # [B, H, N]
            score = g.call_function(aten.mean.dim, (norm, [1]))  # [B, N]
        else:
            score = _materialise(g, node, q, k, v)
    out.args = (tuple(out.args[0]) + (score,),)
    eliminate_dead_code(g)
    gm.recompile()
    gm.meta[OUTPUTS_KEY] = list(gm.meta[OUTPUTS_KEY]) + [output]
    return gm


def _materialise(g: fx.Graph, node: fx.Node, q: fx.Node, k: fx.Node, v: fx.Node) -> fx.Node:
    """Replace ``sdpa(q, k, v)`` by explicit attention; return the L2-normalised received-attention score."""
    if len(node.args) > 3 or set(node.kwargs) - {"scale"}:
        raise ScoreError("the attention has a mask, dropout or causal flag; the attention-score rule supports plain attention")
    head_dim = int(q.meta["val"].shape[-1]) if "val" in q.meta else None
    scale = node.kwargs.get("scale") or (1.0 / math.sqrt(head_dim))
    with g.inserting_before(node):
        kt = g.call_function(aten.transpose.int, (k, -2, -1))
        logits = g.call_function(aten.mul.Tensor, (g.call_function(aten.matmul.default, (q, kt)), scale))
        probs = g.call_function(aten._softmax.default, (logits, -1, False))  # [B, H, Nq, Nk]
        attn = g.call_function(aten.matmul.default, (probs, v))
    node.replace_all_uses_with(attn)
    g.erase_node(node)
    out = next(n for n in g.nodes if n.op == "output")
    with g.inserting_before(out):
        received = g.call_function(aten.sum.dim_IntList, (g.call_function(aten.mean.dim, (probs, [1])), [1]))  # [B, Nk]
        norm = g.call_function(aten.linalg_vector_norm.default, (received, 2, [-1], True))
        return g.call_function(aten.div.Tensor, (received, norm))


class TapTokenScore(Pass):
    """Add the token score of ``rule`` as the output ``output`` of an attention graph, in place.

    Requires exactly one ``scaled_dot_product_attention`` (else :class:`ScoreError`); ensures the
    graph returns ``output`` last. ``rule="attn"`` replaces the fused attention by an explicit one.
    """

    def __init__(self, rule: str, output: str):
        self.rule, self.output = rule, output

    def call(self, gm: fx.GraphModule) -> PassResult:
        return PassResult(_add_token_score(gm, self.rule, self.output), True)

    def ensures(self, gm: fx.GraphModule) -> None:
        if gm.meta.get(OUTPUTS_KEY, [None])[-1] != self.output:
            raise PassError(f"the graph does not return the score {self.output!r} last")
