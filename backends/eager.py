"""Eager backend: the segments' FX GraphModules, run in path order by plain PyTorch.

It is the reference every other backend is compared with, and the default on CPU.
"""

from __future__ import annotations

import torch

from cachec.errors import ShapeError
from cachec.program import Program


def store(caches: dict[str, torch.Tensor], name: str, value: torch.Tensor) -> None:
    """Copy ``value`` into the buffer ``name``, allocating it once per shape (fixed address)."""
    buf = caches.get(name)
    if buf is None or buf.shape != value.shape or buf.dtype != value.dtype or buf.device != value.device:
        caches[name] = value.detach().clone()
    else:
        buf.copy_(value)


def load(caches: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    try:
        return caches[name]
    except KeyError:
        raise ShapeError(
            f"cache {name} is read before any full step wrote it; a trajectory must start with a full step"
        ) from None


def lower_path(program: Program, path: str):
    ops = program.paths[path]
    segments = program.segments

    def run(env: dict, caches: dict) -> float:
        flops = 0.0
        for op in ops:
            kind = op[0]
            if kind == "run":
                seg = segments[op[1]]
                seg(env)
                flops += seg.flops
            elif kind == "load":
                env[op[2]] = load(caches, op[1])
            else:
                store(caches, op[2], env[op[1]])
        return flops

    return run
