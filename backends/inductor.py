"""Inductor backend: each variant fused into one graph and compiled by Inductor.

Variants are compiled with ``torch._inductor.compile_fx.compile_fx`` on their first call (with
that call's tensors as examples) rather than with ``torch.compile``: this backend also runs
*inside* a Dynamo-compiled frame (``torch.compile(model, backend="cachec")``), where a nested
``torch.compile`` would be skipped. Each variant compiles once per input shape; later
trajectories compile nothing.

``mode="reduce-overhead"`` replays each variant as a CUDA graph that cachec captures itself
(:class:`~cachec.backends.cuda_graphs.CudaGraphRunner`): one graph per variant, input shape and
branch, captured over the runtime's cache buffers (no cache is copied in or out of a graph), all
graphs of a program sharing one memory pool. Inductor's own CUDA-graph trees are not used:
they are keyed to Dynamo's tracing context, which a graph compiled directly with ``compile_fx``
lacks, and the first GPU report (docs/benchmarks.md) measured a ``none`` step at 4.9 ms against
2.7 ms for ``torch.compile(mode="reduce-overhead")`` of the same DiT-XL/2 — launch-bound time
that a graph replay removes. On the CPU the mode compiles without graphs.
"""

from __future__ import annotations

import functools

import torch

from cachec.errors import BackendError
from cachec.program import Program

from .base import Backend
from .cuda_graphs import CudaGraphRunner
from .eager import lower_path

MODES = {None: {}, "default": {}, "reduce-overhead": {}, "max-autotune": {"max_autotune": True},
         "max-autotune-no-cudagraphs": {"max_autotune": True}}
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def input_layout(args) -> tuple:
    """What a graph compiled by ``compile_fx`` is specialised to: each tensor's shape, strides,
    dtype and device. Strides count: the same variant may be called with a value laid out two ways
    (blockcache's final variant gets the last block's contiguous output on a full step, and on a step
    that reuses the blocks ``input + cached residual``, which keeps the layout of the transposed patch
    embedding), and Inductor's generated code asserts the strides it was compiled for."""
    return tuple((tuple(a.shape), tuple(a.stride()), a.dtype, a.device) if isinstance(a, torch.Tensor) else a
                 for a in args)


class _LazyInductor:
    """Compiles the wrapped graph with Inductor on its first call at each input layout (a variant may
    run on a sub-batch too: per-sample decisions, FasterCache's conditional half; or on inputs with
    other strides; a graph compiled with ``compile_fx`` is specialised to its example shapes and
    strides and has no guards to recompile)."""

    def __init__(self, gm, config_patches: dict):
        self.gm = gm
        self.config_patches = config_patches
        self.compiled: dict[tuple, object] = {}

    def __call__(self, *args):
        key = input_layout(args)
        fn = self.compiled.get(key)
        if fn is None:
            from torch._inductor.compile_fx import compile_fx

            fn = self.compiled[key] = compile_fx(self.gm, list(args), config_patches=self.config_patches)
        return fn(*args)


def lower(program: Program, mode: str | None = None) -> dict:
    if mode not in MODES:
        raise BackendError(f"unknown inductor mode {mode!r}; accepted: {', '.join(str(m) for m in MODES)}")
    patches = MODES[mode]
    pool = torch.cuda.graph_pool_handle() if mode in CUDA_GRAPH_MODES and torch.cuda.is_available() else None

    def compile_fn(gm):
        return _LazyInductor(gm, patches)

    runner = functools.partial(CudaGraphRunner, pool=pool) if pool is not None else None
    with torch.no_grad():
        return {path: lower_path(program, path, compile_fn, runner) for path in program.variants}


class InductorBackend(Backend):
    """Lowers eager artifacts and in-process programs; writes no artifact of its own (Inductor's
    compiled code is tied to the machine and torch build, so it is compiled on first call)."""

    name = "inductor"
    cuda_graphs = True  # mode="reduce-overhead"
    fft = True  # complex FFTs fall back to aten kernels
    devices = ("cpu", "cuda")
    movable = True
    quantized_weights = True  # Inductor compiles torchao's subclass weights (int8 kernels)

    def lower(self, program, **options) -> dict:
        return lower(program, **options)
