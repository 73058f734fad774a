"""Eager backend: plain PyTorch running each path as one fused FX graph.

Each variant is fused (see :mod:`cachec.passes.fuse_path`) so a step costs one GraphModule call
per path instead of one per segment; parameters are the segments' own tensors. It is the
reference every other backend is compared with, and the default on CPU.
"""

from __future__ import annotations

import torch

from cachec.passes.fuse_path import fuse_path
from cachec.program import Program


def store(caches: dict[str, torch.Tensor], name: str, value: torch.Tensor) -> None:
    """Copy ``value`` into the buffer ``name``, allocating it once per shape (fixed address)."""
    buf = caches.get(name)
    if buf is None or buf.shape != value.shape or buf.dtype != value.dtype or buf.device != value.device:
        caches[name] = value.detach().clone()
    else:
        buf.copy_(value)


def batch_of(program: Program, env: dict) -> int:
    """The batch size of a step, read from an input that has the batch dimension."""
    batched = [n for n in program.meta.get("batch_dims") or {} if n in env]
    first = env[batched[0]] if batched else env[program.inputs[0]]
    return int(first.shape[0]) if first.dim() else 1


# The paths a step may run after another within the same call: a dynamic policy's probe head
# hands its values to one of its tails; every other path is the whole step.
FOLLOWERS = {"head": ("tail_full", "tail_reuse")}


def values_needed_after(program: Program, path: str) -> set[str]:
    """Values a path must hand on: the model output, the values the runtime reads on the host,
    and the inputs of the paths that may follow it in the same step.

    Only a path's *followers* count, not every other path: a cached variant that kept the values
    the full variant's skipped modules read (their layer norms, shifts and scales) would compute
    them for nobody. Everything else is dead in the fused graph and eliminated.
    """
    keep = {program.output}
    keep.update(program.host_reads())
    for name in FOLLOWERS.get(path, ()):
        for op in program.paths.get(name, ()):
            if op[0] == "run":
                keep.update(program.segments[op[1]].inputs)
    return keep


def lower_path(program: Program, path: str, compile_fn=None):
    """A callable ``run(env, caches) -> flops`` for one variant of ``program``."""
    fused = fuse_path(program.segments, program.paths[path], values_needed_after(program, path))
    module = fused.module if compile_fn is None else compile_fn(fused.module)
    n_out = len(fused.outputs)

    def run(env: dict, caches: dict) -> float:
        args = [env[n] for n in fused.inputs] + [caches[c] for c in fused.cache_inputs]
        results = module(*args)
        env.update(zip(fused.outputs, results[:n_out], strict=True))
        for cache, value in zip(fused.cache_outputs, results[n_out:], strict=True):
            store(caches, cache, value)
        return fused.flops

    run.fused = fused
    return run


def lower(program: Program) -> dict:
    return {path: lower_path(program, path) for path in program.paths}
