"""Inductor backend: each variant fused into one graph and compiled by Inductor.

Variants are compiled with ``torch._inductor.compile_fx.compile_fx`` on their first call (with
that call's tensors as examples) rather than with ``torch.compile``: this backend also runs
*inside* a Dynamo-compiled frame (``torch.compile(model, backend="cachec")``), where a nested
``torch.compile`` would be skipped. Caches stay runtime buffers with fixed addresses, passed in
and written back in place, so CUDA graphs (``mode="reduce-overhead"``) see stable inputs. Each
variant compiles once per input shape; later trajectories compile nothing.
"""

from __future__ import annotations

import torch

from cachec.errors import BackendError
from cachec.program import Program

from . import Backend
from .eager import lower_path

MODES = {None: {}, "default": {}, "reduce-overhead": {"triton.cudagraphs": True},
         "max-autotune": {"max_autotune": True}, "max-autotune-no-cudagraphs": {"max_autotune": True}}


class _LazyInductor:
    """Compiles the wrapped graph with Inductor on the first call."""

    def __init__(self, gm, config_patches: dict):
        self.gm = gm
        self.config_patches = config_patches
        self.compiled = None

    def __call__(self, *args):
        if self.compiled is None:
            from torch._inductor.compile_fx import compile_fx

            self.compiled = compile_fx(self.gm, list(args), config_patches=self.config_patches)
        out = self.compiled(*args)
        if self.config_patches.get("triton.cudagraphs"):
            # a CUDA-graph replay overwrites its outputs: hand out copies (caches are copied anyway)
            out = [o.clone() if isinstance(o, torch.Tensor) else o for o in out]
        return out


def lower(program: Program, mode: str | None = None) -> dict:
    if mode not in MODES:
        raise BackendError(f"unknown inductor mode {mode!r}; accepted: {', '.join(str(m) for m in MODES)}")
    patches = MODES[mode]

    def compile_fn(gm):
        return _LazyInductor(gm, patches)

    with torch.no_grad():
        return {path: lower_path(program, path, compile_fn) for path in program.variants}


class InductorBackend(Backend):
    """Lowers eager artifacts and in-process programs; writes no artifact of its own (Inductor's
    compiled code is tied to the machine and torch build, so it is compiled on first call)."""

    name = "inductor"
    cuda_graphs = True  # mode="reduce-overhead"
    devices = ("cpu", "cuda")
    movable = True

    def lower(self, program, **options) -> dict:
        return lower(program, **options)
