"""Plan a token-wise policy (ToCa, DuCa): full, partial and reuse paths over module regions.

Every token-wise region (MLP, cross-attention, and self-attention with ``attn=sdpa``) is replaced
by its *token variant* (:mod:`cachec.passes.gather_scatter`) in every path that runs it, including
the full path, where the runtime hands it all ``N`` token positions. One graph per region thus
serves both kinds of step, so weights stay owned by a single segment. Paths:

* ``full``    — token regions run on all tokens (``load`` cache → ``run`` variant → ``store``),
  the other regions run as compiled and ``store`` their outputs; the scores the selection rule
  needs are tapped from each block's self-attention and stored too;
* ``partial`` — the same token variants (the runtime supplies ``k ≤ N`` positions), the other
  regions ``load`` their caches;
* ``reuse``   — every region ``load``\\ s its cache (FORA's reuse path; DuCa's aggressive step).

The program's ``meta["tokens"]`` lists, per token region, its index value, token count, block,
kind, score cache and its FLOPs as ``fixed + per_token·k`` (counted from the graph's shapes).
"""

from __future__ import annotations

import torch

from cachec.passes.attention_scores import ScoreError, add_token_score
from cachec.passes.gather_scatter import TokenwiseError, flops_in_tokens, propagate, token_variant

from .errors import ModelError, PolicyError
from .flops import graph_flops
from .program import cache_name
from .token_policy import TOKEN_BACKENDS

INDEX_PREFIX = "tokens__"


def _is_token_region(kind: str, attn_mode: str) -> bool:
    return kind in ("mlp", "cross_attn") or (kind == "attn" and attn_mode == "sdpa")


def _example(planner, names: list[str]) -> dict[str, torch.Tensor]:
    return {n: planner.meta[n] for n in names}


def plan_tokens(planner, policy) -> None:
    """Set ``planner.paths`` to the full/partial/reuse paths of ``policy`` and record ``meta["tokens"]``."""
    attn_mode, rule = policy.params["attn"], policy.params["select"]
    by_seg = {planner.region_segment[r.name]: r for r in planner.regions}
    variants: dict[str, str] = {}  # region segment -> its token variant segment
    regions: list[dict] = []
    for seg_name, region in by_seg.items():
        if not _is_token_region(region.kind, attn_mode):
            continue
        seg = planner.segments[seg_name]
        outs = seg.outputs
        n = int(planner.meta[outs[0]].shape[1])
        caches = {o: cache_name(seg_name, str(k)) for k, o in enumerate(outs)}
        for o, c in caches.items():
            planner.meta[c] = planner.meta[o]
        index = INDEX_PREFIX + seg_name
        try:
            gm = token_variant(seg.module, n, index, caches)
        except TokenwiseError as exc:
            raise ModelError(
                f"{policy.name}: region {region.name} ({region.kind}) cannot be computed on a subset of its tokens: "
                f"{exc}. Token-wise policies support DiT/PixArt-style MLP and attention regions"
                + ("; try attn=reuse" if region.kind == "attn" else "")
            ) from None
        val = planner.meta[outs[0]]
        planner.meta[index] = val.new_empty((val.shape[0], n), dtype=torch.int64)
        fixed, per_token = flops_in_tokens(gm, _example(planner, [*seg.inputs, *caches.values()]), index, n)
        name = planner.add_segment(f"{seg_name}__tokens", gm, "region")
        planner.extra[name].flops = fixed + per_token * n
        variants[seg_name] = name
        regions.append({"segment": name, "region": region.name, "kind": region.kind, "block": region.block,
                        "index": index, "tokens": n, "outputs": outs, "caches": list(caches.values()),
                        "fixed_flops": fixed, "token_flops": per_token, "score": None})
    if not regions:
        raise ModelError(f"{policy.name}: {planner.captured.model_class} has no MLP or attention region to compute token-wise")
    scores = _tap_scores(planner, policy, rule, by_seg, variants, regions) if rule != "random" else {}
    full, partial, reuse = [], [], []
    for op in planner.paths["full"]:
        region = by_seg.get(op[1])
        if region is None:
            for path in (full, partial, reuse):
                path.append(op)
            continue
        outs = [o for o in planner.segments[op[1]].outputs if not o.startswith("score__")]
        caches = [cache_name(op[1], str(k)) for k in range(len(outs))]
        for o, c in zip(outs, caches, strict=True):
            planner.meta[c] = planner.meta[o]
        loads = [("load", c, o) for o, c in zip(outs, caches, strict=True)]
        stores = [("store", o, c) for o, c in zip(outs, caches, strict=True)]
        score = [("store", scores[op[1]][0], scores[op[1]][1])] if op[1] in scores else []
        if op[1] in variants:
            run = [("load", c, c) for c in caches] + [("run", variants[op[1]])] + stores
            full += run + score
            partial += run
        else:
            full += [op] + stores + score
            partial += loads
        reuse += loads
    planner.paths = {"full": full, "partial": partial, "reuse": reuse}
    planner.token_meta = {"regions": regions, "layers": len(planner.blocks), "backends": list(TOKEN_BACKENDS)}


def _tap_scores(planner, policy, rule, by_seg, variants, regions) -> dict[str, tuple[str, str]]:
    """Add the rule's score output to each needed self-attention segment: segment -> (value, cache)."""
    attn_of_block = {r.block: seg for seg, r in by_seg.items() if r.kind == "attn"}
    taps: dict[str, tuple[str, str]] = {}
    for entry in regions:
        seg_name = attn_of_block.get(entry["block"])
        if seg_name is None:
            raise PolicyError(f"{policy.name}: select={rule} scores tokens by block {entry['block']}'s self-attention, "
                              "which this model does not have; use select=random")
        value, cache = f"score__{seg_name}", cache_name("score", seg_name)
        if seg_name not in taps:
            target = variants.get(seg_name, seg_name)
            seg = planner.extra.get(target) or planner.segments[target]
            try:
                add_token_score(seg.module, rule, value)
            except ScoreError as exc:
                raise PolicyError(f"{policy.name}: select={rule} on {by_seg[seg_name].name}: {exc}") from None
            if rule == "attn":  # the materialised attention map costs FLOPs: recount from the shapes
                _recount(planner, seg, regions)
            taps[seg_name] = (value, cache)
            ref = planner.meta[seg.outputs[0]]
            planner.meta[value] = planner.meta[cache] = ref.new_empty(tuple(ref.shape[:2]))
        if planner.meta[taps[seg_name][0]].shape[1] != entry["tokens"]:
            raise PolicyError(f"{policy.name}: select={rule}: block {entry['block']}'s self-attention has another "
                              f"token count than {entry['region']}; use select=random")
        entry["score"] = taps[seg_name][1]
    return taps


def _recount(planner, seg, regions: list[dict]) -> None:
    """FLOPs of a rewritten attention segment, from its new shapes (per token for a token variant)."""
    entry = next((e for e in regions if e["segment"] == seg.name), None)
    example = _example(planner, seg.inputs)
    if entry is not None:
        fixed, per = flops_in_tokens(seg.module, example, entry["index"], entry["tokens"])
        entry["fixed_flops"], entry["token_flops"] = fixed, per
        seg.flops = fixed + per * entry["tokens"]
    else:
        propagate(seg.module, example)
        seg.flops = graph_flops(seg.module, 1)


def check_token_backend(backend: str, policy) -> None:
    """Token variants change their token count every step; only some backends can run that.

    ``select=attn`` is named on its own: it materialises attention maps, which the fused attention
    kernels of ONNX Runtime / TensorRT engines never expose.
    """
    from .policy import parse_policy

    policy = parse_policy(policy)
    if backend in TOKEN_BACKENDS:
        return
    if policy.params["select"] == "attn":
        raise PolicyError(
            f"{policy.name}: select=attn needs a materialised attention map (ToCa's attention score), which the "
            f"{backend} backend cannot provide; use select=knorm, vnorm or random, or --backend "
            f"{' or '.join(TOKEN_BACKENDS)}"
        )
    raise PolicyError(
        f"{policy.name}: partial (gather/scatter) variants change their token count every step, which the {backend} "
        f"backend does not lower yet; use --backend {' or '.join(TOKEN_BACKENDS)}"
    )
