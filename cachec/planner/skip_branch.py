"""DeepCache's planning primitive: cache one U-Net skip branch's deep feature and run only the shallow path.

A U-Net's up path concatenates, layer by layer, the feature coming up from below with a skip
feature of the down path (``torch.cat([hidden, skip], dim=1)`` in every up block). Counting those
concatenations from the last one, branch ``k`` is the one that reads the ``k``-th skip feature
(``0``: the ``conv_in`` output, the shallowest). Its other operand — everything the mid block and
the deeper up layers made — is the *deep feature* DeepCache caches at a full step; a cached step
computes only what the output needs besides it: the down path up to skip feature ``k`` and the up
layers from that concatenation on.

Nothing here is a model table: the concatenations are found from the module hierarchy (nodes of
an ``up_blocks.*`` block) and the cached path by liveness over the segments. Segments that mix
shallow and deep work are split (:func:`~cachec.planner.split.split_segment`), so the cached variant
runs no FLOP its output does not need and every weight keeps one owner.
"""

from __future__ import annotations

import torch

from cachec.graph_keys import SEGMENT_KEY

from ..errors import ModelError
from ..flops import graph_flops
from ..program import Load, Run, Store, cache_name
from ..regions import module_path
from .split import split_segment


def skip_concats(planner) -> list[str]:
    """Names of the up path's skip concatenations, in graph order (the last reads ``conv_in``'s output)."""
    cats = []
    for n in planner.gm.graph.nodes:
        if n.op != "call_function" or n.target is not torch.ops.aten.cat.default:
            continue
        tensors = n.args[0]
        dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
        in_up_block = any(fqn.startswith("up_blocks.") for fqn, _ in module_path(n))
        if in_up_block and dim == 1 and len(tensors) == 2:
            cats.append(n.name)
    return cats


def deep_feature(planner, branch: int, policy: str) -> str:
    """The value DeepCache caches for skip branch ``branch`` (0 = shallowest)."""
    cats = skip_concats(planner)
    if not cats:
        raise ModelError(f"{policy}: {planner.captured.model_class} has no U-Net skip connections (no "
                         "up_blocks concatenating down-path features), so DeepCache does not apply; it is for "
                         "U-Nets such as UNet2DConditionModel. For a transformer use fora, delta, fbcache or teacache")
    if branch >= len(cats):
        raise ModelError(f"{policy}: branch={branch} is out of range for this U-Net, which has {len(cats)} skip "
                         f"branches; accepted: 0 .. {len(cats) - 1}")
    return planner.nodes[cats[len(cats) - 1 - branch]].args[0][0].name


def _replace_run(ops, seg: str, new: list) -> list:
    i = ops.index(Run(seg))
    return ops[:i] + new + ops[i + 1 :]


def _split(planner, seg_name: str, needed: set[str], rest_name: str) -> str | None:
    """Split a base segment so that its first part (same name) computes ``needed``; the rest runs after it."""
    head, rest = split_segment(planner.segments[seg_name], needed, rest_name)
    if rest is None:
        return None
    for s in (head, rest):
        s.flops = graph_flops(s.module, planner.batch)
    planner.segments[seg_name], planner.segments[rest_name] = head, rest
    planner.variants["full"] = _replace_run(planner.variants["full"], seg_name, [Run(seg_name), Run(rest_name)])
    i = planner.order.index(seg_name)
    planner.order.insert(i + 1, rest_name)
    return rest_name


def skip_branch(planner, feature: str, tag: str) -> None:
    """full stores ``feature``; reuse loads it and runs only the segments (or parts) the output needs besides it."""
    owner = planner.nodes[feature].meta[SEGMENT_KEY]
    if feature not in planner.segments[owner].outputs:
        _split(planner, owner, {feature}, f"{owner}_post")  # the rest of the segment reads the feature as an input
    cache = cache_name(tag, "deep")
    planner.meta[cache] = planner.meta[feature]
    needed, provided, keep = {planner.captured.output_name}, {feature}, []
    for op in reversed(list(planner.variants["full"])):
        seg = planner.segments[op.segment]
        outs = set(seg.outputs) & (needed - provided)
        if not outs:
            continue
        if outs != set(seg.outputs) - provided:
            _split(planner, op.segment, outs, f"{op.segment}_deep")  # its other outputs feed only the deep path
            seg = planner.segments[op.segment]
        keep.append(op)
        needed |= set(seg.inputs)
    if any(feature in planner.segments[op.segment].outputs for op in keep):
        raise ModelError(f"{tag}: the shallow path still needs the segment computing the cached feature {feature}")
    full = planner.variants["full"]
    writer = next(op.segment for op in full if feature in planner.segments[op.segment].outputs)
    planner.variants["full"] = planner.insert_after(full, writer, [Store(feature, cache)])
    planner.variants["reuse"] = [Load(cache, feature)] + list(reversed(keep))
