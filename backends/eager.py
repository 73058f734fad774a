"""Eager backend: plain PyTorch running each variant as one fused FX graph.

Each variant is fused (see :mod:`cachec.planner.fuse`) so a step costs one GraphModule call
per variant instead of one per segment; parameters are the segments' own tensors. It is the
reference every other backend is compared with, and the default on CPU. Its artifacts hold the
captured program itself (``program.json`` and ``program.safetensors``, see
:mod:`cachec.program_store`), so any backend can lower them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cachec import program_store
from cachec.capture import PROGRAM_FILE
from cachec.errors import ArtifactError
from cachec.planner.fuse import fuse_variant, narrow_linears
from cachec.program import Program

from .base import Backend, major_minor, store  # noqa: F401 - store: where other modules find it


def lower_path(program: Program, path: str, compile_fn=None, runner=None):
    """A callable ``run(env, caches) -> flops`` for one variant of ``program``: its fused graph,
    compiled by ``compile_fn`` (if given) and called by ``runner`` (default :func:`fused_runner`)."""
    fused = narrow_linears(fuse_variant(program.segments, program.variants[path], program.needed_after(path)))
    module = fused.module if compile_fn is None else compile_fn(fused.module)
    run = (runner or fused_runner)(module, fused.inputs, fused.cache_inputs, fused.outputs, fused.cache_outputs,
                                   fused.flops)
    run.fused = fused
    return run


def fused_runner(module, inputs: list[str], cache_inputs: list[str], outputs: list[str], cache_outputs: list[str],
                 flops: float):
    """``run(env, caches) -> flops`` for a variant compiled into one callable: its inputs, then the
    caches it reads, positionally; its outputs, then the caches it writes (stored in place)."""
    n_out = len(outputs)

    def run(env: dict, caches: dict) -> float:
        args = [env[n] for n in inputs] + [caches[c] for c in cache_inputs]
        results = module(*args)
        env.update(zip(outputs, results[:n_out], strict=True))
        for cache, value in zip(cache_outputs, results[n_out:], strict=True):
            store(caches, cache, value)
        return flops

    return run


def lower(program: Program) -> dict:
    return {path: lower_path(program, path) for path in program.variants}


class EagerBackend(Backend):
    name = "eager"
    dynamic_variants = True  # a fused FX graph runs any shape its ops accept
    token_variants = True
    fft = True
    devices = ("cpu", "cuda")
    movable = True
    writes_artifacts = True
    holds_graphs = True
    quantized_weights = True  # torchao's subclass weights run as they do in the model

    def lower(self, program, **options) -> dict:
        return lower(program, **options)

    def save(self, out_dir: Path, program, captured) -> dict:
        program_store.save(captured.exported, out_dir)  # JSON + safetensors: nothing to unpickle on load
        return {}

    def validate_lowered(self, manifest: dict, fail) -> None:
        for name in (PROGRAM_FILE, program_store.WEIGHTS_FILE):
            if name not in manifest["files"]:
                fail("files", f"does not list {name}, the captured program of an eager artifact")

    def check_versions(self, path: Path, manifest: dict, allow_version_mismatch: bool) -> None:
        """``program.json`` is the ``torch.export`` serialiser's document, whose format is only
        promised to load on the torch (major.minor) that wrote it."""
        wrote = manifest["versions"]["torch"]
        if not allow_version_mismatch and major_minor(wrote) != major_minor(torch.__version__):
            raise ArtifactError(
                f"{Path(path) / PROGRAM_FILE} was exported with torch {wrote} but torch {torch.__version__} "
                f"is installed; torch.export files are only guaranteed to load on the torch version that wrote "
                f"them: recompile the artifact with this torch; pass allow_version_mismatch=True "
                f"(CLI: --allow-version-mismatch) to try anyway"
            )
