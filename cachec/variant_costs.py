"""What each variant of a program costs per step: FLOPs from the graph, dispatched ops by running it.

``cachec inspect`` prints this table so that a variant's price is visible before any GPU runs it:
FLOPs (matmul/attention, per sample, from the graph's shapes) say what the arithmetic costs, and
the dispatched-op count (:mod:`cachec.dispatch_count`, views excluded) approximates the kernels an
eager GPU step launches. The ops are counted by running each variant once on zero inputs of its
declared shapes, on the weights' own device — on a model planned on the ``meta`` device (FLUX.1-dev
on a machine with less memory than the model) nothing is materialised.
"""

from __future__ import annotations

import torch

from cachec.backends import get_backend

from .dispatch_count import DispatchCounter
from .program import Program


def weights_device(program: Program) -> torch.device:
    for seg in program.segments.values():
        for t in seg.parameters().values():
            return t.device
    return torch.device("cpu")


def variant_costs(program: Program, batch: int = 1) -> dict[str, dict]:
    """Per variant: ``flops_per_sample`` (fused), ``segment_flops_per_sample`` and ``dispatched_ops`` of
    one step at ``batch``."""
    if any(seg.module is None for seg in program.segments.values()):
        # an ONNX Runtime or TensorRT artifact holds lowered files, not graphs: nothing to run here
        return {name: {"flops_per_sample": program.variant_flops(name),
                       "segment_flops_per_sample": program.variant_flops(name), "dispatched_ops": None,
                       "note": "not counted: the artifact holds lowered files, not graphs"}
                for name in program.variants}
    device = weights_device(program)
    costs = {}
    for name, run in get_backend("eager").lower(program).items():  # fused variants: what eager dispatches
        fused = run.fused
        # the fused variant eager and Inductor run (chunked linears narrowed to the chunks it reads),
        # and its segments as a backend that runs segment by segment (ONNX Runtime, TensorRT) does
        entry = {"flops_per_sample": fused.flops, "segment_flops_per_sample": program.variant_flops(name),
                 "dispatched_ops": None}
        try:
            env = {n: _zeros(program, n, batch, device) for n in fused.inputs}
            caches = {c: _zeros(program, c, batch, device) for c in fused.cache_inputs}
            counter = DispatchCounter()
            with torch.no_grad(), counter:
                run(env, caches)
            entry["dispatched_ops"] = counter.ops
        except Exception as exc:  # noqa: BLE001 - a variant that cannot run on zeros is reported, not fatal
            entry["note"] = f"not counted: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        costs[name] = entry
    return costs


def _zeros(program: Program, name: str, batch: int, device: torch.device) -> torch.Tensor:
    spec = program.values[name]
    return torch.zeros(spec.concrete(batch), dtype=getattr(torch, spec.dtype), device=device)
