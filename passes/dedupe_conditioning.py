"""Compute each conditioning value once: common-subexpression elimination on conditioning nodes.

diffusers models recompute the same input-only values many times per forward. DiT's
``AdaLayerNormZero`` gives every block its own ``CombinedTimestepLabelEmbeddings``, so the
weightless part of the timestep embedding (frequency table, ``t·freqs``, ``sin``, ``cos``,
``cat``) runs 29 times per step with identical inputs; only the MLPs after it differ. In a full
step that is a few percent of the kernels; in a cached step, where the blocks' attention and MLP
are skipped, it is most of them. After export these are plain, identical ATen nodes, so one
structural rule removes them: two nodes with the same target and the same (deduplicated)
arguments are one node.

The pass runs after :class:`~cachec.passes.HoistConditioning` and touches conditioning nodes
only (``COND_KEY``): merging two identical computations on the *stream* (say, one layer norm of
the same value read by an attention and by an MLP region) would make one region read a value
made inside another, which a cached step that skips the first could not supply. Random and
in-place ops are never merged (torch's own CSE ban list, plus any op whose schema mutates).
The surviving node is the first one, so the graph stays in order.
"""

from __future__ import annotations

import operator

import torch
from torch import fx
from torch.fx.passes.dialect.common.cse_pass import get_CSE_banned_ops

from cachec.graph_keys import COND_KEY

from .infra import Pass, PassError, PassResult

_BANNED = get_CSE_banned_ops()


def _mutates(target) -> bool:
    schema = getattr(target, "_schema", None)
    return schema is not None and schema.is_mutable


def _aliases(target) -> bool:
    """Whether the op's output may be a view of an input (``reshape``, ``view``, ``t``…) or an item of it."""
    if target is operator.getitem:
        return True
    schema = getattr(target, "_schema", None)
    return schema is not None and any(r.alias_info is not None for r in schema.returns)


def _changed_in_place(node: fx.Node) -> bool:
    """Whether an op changes ``node``'s value in place, directly or through a view of it
    (``linear(x).reshape(...).add_(bias)``, as torchao's quantized linears are exported)."""
    stack, seen = [node], {node}
    while stack:
        for user in stack.pop().users:
            if user.op != "call_function" or user in seen:
                continue
            if _mutates(user.target):
                return True
            if _aliases(user.target):
                seen.add(user)
                stack.append(user)
    return False


def _mergeable(node: fx.Node) -> bool:
    """A pure conditioning node whose value no later op changes in place.

    The export graph is not purely functional: ``arange(4).div_(n)`` (a RoPE/sinusoidal table
    built in place) would divide one shared tensor twice if two such ``arange`` were one node.
    """
    if node.op != "call_function" or not node.meta.get(COND_KEY):
        return False
    target = node.target
    if getattr(target, "overloadpacket", target) in _BANNED or _mutates(target):
        return False
    if torch.Tag.nondeterministic_seeded in getattr(target, "tags", ()):
        return False
    return not _changed_in_place(node)


def _key(value):
    """A hashable form of an argument. Nodes stand for themselves: the sweep is in graph order and
    a merged node's users are rewired before they are reached, so equal inputs are the same node."""
    if isinstance(value, fx.Node):
        return ("node", value)
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_key(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, _key(v)) for k, v in value.items())))
    if isinstance(value, float) and value != value:  # NaN never equals itself: never merge on it
        return ("nan", object())
    try:
        hash(value)
    except TypeError:
        return ("unhashable", object())
    return (type(value).__name__, value)


class DedupeConditioning(Pass):
    """Merge identical conditioning nodes (see the module docstring)."""

    def requires(self, gm: fx.GraphModule) -> None:
        if not any(n.meta.get(COND_KEY) is not None for n in gm.graph.nodes if n.op == "call_function"):
            raise PassError("DedupeConditioning needs HoistConditioning's marks (run it first)")

    def call(self, gm: fx.GraphModule) -> PassResult:
        seen: dict[tuple, fx.Node] = {}
        removed = 0
        for node in list(gm.graph.nodes):
            if not _mergeable(node):
                continue
            key = (node.target, _key(node.args), _key(node.kwargs))
            first = seen.get(key)
            if first is None:
                seen[key] = node
                continue
            node.replace_all_uses_with(first)
            gm.graph.erase_node(node)
            removed += 1
        return PassResult(gm, removed > 0)

    def ensures(self, gm: fx.GraphModule) -> None:
        keys = set()
        for node in gm.graph.nodes:
            if _mergeable(node):
                key = (node.target, _key(node.args), _key(node.kwargs))
                if key in keys:
                    raise PassError(f"{node.name} still duplicates an earlier conditioning node")
                keys.add(key)
