"""ONNX Runtime backend: one ``InferenceSession`` per segment, run through IOBinding.

Inputs are bound by pointer to the runtime's tensors (the cache buffers included), and outputs
are bound to tensors allocated from the program's value specs — an output that the variant stores
into a cache is bound straight to that cache buffer, so cache writes cost no copy. CPU here; the
CUDA execution provider is used when onnxruntime-gpu is installed and the inputs are on a GPU.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from cachec.errors import BackendError
from cachec.program import Load, Op, Program, Run, Store

from . import Backend, onnx_export
from .eager import store
from .onnx_export import export_program, io_name


def _ort():
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendError("the onnxruntime backend needs the onnx extra: pip install 'cachec[onnx]'") from exc
    return onnxruntime


def check() -> None:
    """Fail early, naming the extra, when a package this backend needs is missing."""
    _ort()
    try:
        import onnxscript  # noqa: F401 - the ONNX exporter needs it
    except ImportError as exc:
        raise BackendError("ONNX export needs onnxscript: pip install 'cachec[onnx]'") from exc


def sessions_for(program: Program, onnx_dir: Path | None = None, providers: list[str] | None = None) -> dict:
    ort = _ort()
    files = program.meta.get("onnx_files")
    scratch = None
    if onnx_dir is None or files is None:
        # no artifact: export into a scratch directory, removed once the sessions hold the models
        onnx_dir = scratch = Path(tempfile.mkdtemp(prefix="cachec-onnx-"))
        files = export_program(program, onnx_dir)
    if providers is None:
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        return {name: ort.InferenceSession(str(Path(onnx_dir) / f), opts, providers=providers)
                for name, f in files.items()}
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _np_dtype(dtype: torch.dtype):
    return torch.empty((), dtype=dtype).numpy().dtype


def lower(program: Program, onnx_dir: Path | None = None, providers: list[str] | None = None) -> dict:
    sessions = sessions_for(program, onnx_dir, providers)
    return {path: _runner(program, ops, sessions) for path, ops in program.variants.items()}


def _runner(program: Program, ops: list[Op], sessions: dict):
    # outputs that a later store in this variant writes to a cache the segment does not read
    # (under its own name or loaded as another value): bind them straight to the cache buffer
    direct: dict[int, dict[str, str]] = {}
    for i, op in enumerate(ops):
        if not isinstance(op, Run):
            continue
        seg = program.segments[op.segment]
        loaded = {o.value: o.cache for o in ops[:i] if isinstance(o, Load)}
        reads = set(seg.inputs) | {loaded[n] for n in seg.inputs if n in loaded}
        stored = {o.value: o.cache for o in ops[i + 1 :] if isinstance(o, Store)}
        direct[i] = {v: c for v, c in stored.items() if v in seg.outputs and c not in reads}

    def run(env: dict, caches: dict) -> float:
        flops = 0.0
        batch = program.batch_of(env)
        for i, op in enumerate(ops):
            if isinstance(op, Load):
                env[op.value] = caches[op.cache]
            elif isinstance(op, Store):
                if env[op.value] is not caches.get(op.cache):
                    store(caches, op.cache, env[op.value])
            else:
                seg = program.segments[op.segment]
                sess = sessions[op.segment]
                io = sess.io_binding()
                for n in seg.inputs:
                    t = env[n]
                    if not t.is_contiguous():
                        t = env[n] = t.contiguous()
                    io.bind_input(io_name(n), t.device.type, t.device.index or 0, _np_dtype(t.dtype),
                                  list(t.shape), t.data_ptr())
                for n in seg.outputs:
                    cache = direct[i].get(n)
                    spec = program.values[n]
                    shape = spec.concrete(batch)
                    out = caches.get(cache) if cache else None
                    if out is None or tuple(out.shape) != shape:
                        device = next(iter(env.values())).device
                        out = torch.empty(shape, dtype=getattr(torch, spec.dtype), device=device)
                        if cache:
                            caches[cache] = out
                    io.bind_output(io_name(n), out.device.type, out.device.index or 0, _np_dtype(out.dtype),
                                   list(out.shape), out.data_ptr())
                    env[n] = out
                sess.run_with_iobinding(io)
                flops += seg.flops
        return flops

    return run


class OnnxRuntimeBackend(Backend):
    """One ONNX file per segment (exported once, shared by every variant), run with IOBinding."""

    name = "onnxruntime"
    devices = ("cpu", "cuda")  # cuda with onnxruntime-gpu
    writes_artifacts = True
    lowered_key = "onnx_files"

    def check(self) -> None:
        check()

    def lower(self, program, **options) -> dict:
        return lower(program, **options)

    def save(self, out_dir: Path, program, captured) -> dict:
        files = onnx_export.export_program(program, out_dir / "onnx", progress=True)  # looked up late: tests interrupt it
        return {self.lowered_key: {k: f"onnx/{v}" for k, v in files.items()}}

    def artifact_options(self, path: Path) -> dict:
        return {"onnx_dir": Path(path)}
