"""DeepCache's plan: cache one U-Net skip branch's deep feature and run only the shallow path.

A U-Net's up path concatenates, layer by layer, the feature coming up from below with a skip
feature of the down path (``torch.cat([hidden, skip], dim=1)`` in every up block). Counting those
concatenations from the last one, branch ``k`` is the one that reads the ``k``-th skip feature
(``0``: the ``conv_in`` output, the shallowest). Its other operand — everything the mid block and
the deeper up layers made — is the *deep feature* DeepCache caches at a full step; a cached step
computes only what the output needs besides it: the down path up to skip feature ``k`` and the up
layers from that concatenation on.

Nothing here is a model table: the concatenations are found from the module hierarchy (nodes of
an ``up_blocks.*`` block) and the cached path by liveness over the segments. Segments that mix
shallow and deep work are split (:meth:`~cachec.planner.Planner.split_base`), so the cached variant
runs no FLOP its output does not need and every weight keeps one owner.
"""

from __future__ import annotations

import torch

from cachec.graph_keys import SEGMENT_KEY

from ..errors import ModelError
from ..planner.plan import Plan, insert_after
from ..program import Load, Store, cache_name
from ..regions import module_path


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


def _split(planner, plan: Plan, seg_name: str, needed: set[str], rest_name: str) -> str | None:
    """Split a base segment so that its first part (same name) computes ``needed``; the rest runs
    after it, in the full variant and on the model's path."""
    rest = planner.split_base(plan, seg_name, needed, rest_name)
    if rest is not None:
        plan.order.insert(plan.order.index(seg_name) + 1, rest)
    return rest


def _computing(plan: Plan, value: str) -> str | None:
    """The segment whose graph computes ``value`` (an earlier split may have moved it off its tag)."""
    for name, seg in plan.base.items():
        if seg.module is not None and any(n.name == value and n.op != "placeholder" for n in seg.module.graph.nodes):
            return name
    return None


def skip_branch(planner, feature: str | list[str], tag: str) -> Plan:
    """full stores ``feature``; reuse loads it and runs only the segments (or parts) the output needs besides it.

    ``feature`` may be several values (FasterDiffusion's encoder features: every skip feature and the
    mid block's output): each is stored where it is computed and loaded in ``reuse``."""
    features = [feature] if isinstance(feature, str) else list(feature)
    plan = planner.new_plan()
    caches = {}
    for i, value in enumerate(features):
        owner = _computing(plan, value) or planner.nodes[value].meta[SEGMENT_KEY]
        if value not in plan.base[owner].outputs:
            # the rest of the segment reads the feature as an input
            _split(planner, plan, owner, {value}, f"{owner}_post" if len(features) == 1 else f"{owner}_post{i}")
        caches[value] = cache_name(tag, "deep") if len(features) == 1 else cache_name(tag, f"enc{i}")
        plan.examples[caches[value]] = plan.examples[value]
    needed, provided, keep = {planner.captured.output_name}, set(features), []
    for op in reversed(list(plan.variants["full"])):
        seg = plan.base[op.segment]
        outs = set(seg.outputs) & (needed - provided)
        if not outs:
            continue
        if outs != set(seg.outputs) - provided:
            _split(planner, plan, op.segment, outs, f"{op.segment}_deep")  # its other outputs feed only the deep path
            seg = plan.base[op.segment]
        keep.append(op)
        needed |= set(seg.inputs)
    for value in features:
        if any(value in plan.base[op.segment].outputs for op in keep):
            raise ModelError(f"{tag}: the shallow path still needs the segment computing the cached feature {value}")
    full = plan.variants["full"]
    for value in features:
        writer = next(op.segment for op in full if value in plan.base[op.segment].outputs)
        full = insert_after(full, writer, [Store(value, caches[value])])
    plan.variants["full"] = full
    plan.variants["reuse"] = [Load(caches[v], v) for v in features] + list(reversed(keep))
    return plan


def encoder_features(planner, policy: str) -> list[str]:
    """FasterDiffusion's encoder features: every skip feature the up path concatenates and the value
    entering the first up block (the mid block's output) — everything the decoder reads from the
    encoder besides the timestep embedding and the conditioning, which it computes itself."""
    cats = skip_concats(planner)
    if not cats:
        raise ModelError(f"{policy}: {planner.captured.model_class} has no U-Net encoder/decoder (no up_blocks "
                         "concatenating down-path features), so encoder propagation does not apply; it is for U-Nets "
                         "such as UNet2DConditionModel. For a transformer use fora, delta, fbcache or teacache")
    skips = [planner.nodes[c].args[0][1] for c in cats]
    to_up = planner.nodes[cats[0]].args[0][0]
    if any(fqn.startswith("up_blocks.") for fqn, _ in module_path(to_up)):
        raise ModelError(f"{policy}: the first up block of {planner.captured.model_class} changes its input before "
                         f"the first skip concatenation ({to_up.name}), so the decoder's input from the encoder "
                         "is not one value; encoder propagation supports U-Nets whose up blocks start with it")
    return [to_up.name] + [n.name for n in skips]
