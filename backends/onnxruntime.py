"""ONNX Runtime backend: one ``InferenceSession`` per segment, run through IOBinding.

Inputs are bound by pointer to the runtime's tensors (the cache buffers included), and outputs
are bound to tensors allocated from the program's value specs — an output that the variant stores
into a cache is bound straight to that cache buffer, so cache writes cost no copy. CPU here; the
CUDA execution provider is used when onnxruntime-gpu is installed and a GPU is present, on torch's
current stream (:func:`default_providers`), so tensors on the GPU are bound where they are.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from cachec.errors import ArtifactError, BackendError
from cachec.program import Op, Program
from cachec.program_store import one_line

from . import onnx_export
from .base import Backend, output_buffer, outputs_bound_to_caches, run_cache_op
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


def sessions_for(program: Program, onnx_dir: Path | None = None, providers: list[str] | None = None,
                 onnx_files: dict[str, str] | None = None) -> dict:
    """An inference session per segment: of an artifact's files (``onnx_dir`` and its ``onnx_files``,
    segment -> file), else of the program's segments exported into a scratch directory."""
    ort = _ort()
    files = onnx_files
    scratch = None
    if onnx_dir is None or files is None:
        # no artifact: export into a scratch directory, removed once the sessions hold the models
        onnx_dir = scratch = Path(tempfile.mkdtemp(prefix="cachec-onnx-"))
        files = export_program(program, onnx_dir)
    if providers is None:
        cuda = torch.cuda.is_available()
        providers = default_providers(ort.get_available_providers(),
                                      torch.cuda.current_device() if cuda else None,
                                      torch.cuda.current_stream().cuda_stream if cuda else None)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        models = {name: Path(onnx_dir) / f for name, f in files.items()}
        if scratch is not None:
            return {name: ort.InferenceSession(str(f), opts, providers=providers) for name, f in models.items()}
        sessions = {}
        for name, f in models.items():  # an artifact's files: vetted first, and a bad one named
            refuse_external_data(f)
            try:
                sessions[name] = ort.InferenceSession(str(f), opts, providers=providers)
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own kinds on an invalid model
                raise ArtifactError(f"{f} could not be loaded by onnxruntime {ort.__version__} "
                                    f"({type(exc).__name__}: {one_line(exc, 200)}); recompile the artifact") from exc
        return sessions
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def refuse_external_data(path: Path) -> None:
    """Refuse an artifact's ONNX file whose tensors live in other files.

    Why: ONNX Runtime reads external data from a path the model names, which a hand-made file
    can point anywhere (``../../secret``); cachec exports without external data, so an artifact
    file that has any was not written by cachec.
    """
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    try:
        model = onnx.load(str(path), load_external_data=False)
        external = any(uses_external_data(t) for t in _get_all_tensors(model))
    except Exception as exc:  # noqa: BLE001 - protobuf raises several kinds on a corrupt file
        raise ArtifactError(f"{path} is not a valid ONNX file ({type(exc).__name__}); recompile the artifact") from None
    if external:
        raise ArtifactError(f"{path} refers to tensor data in other files, which cachec never writes and ONNX Runtime "
                            "would read from wherever the file points; recompile the artifact")


def default_providers(available: list[str], device: int | None, stream: int | None) -> list:
    """CUDA first when both onnxruntime-gpu and a GPU are here, running on torch's current stream.

    Why torch's stream: inputs and cache buffers are torch tensors written by torch kernels (the
    previous step, the sampler), bound by address. On ORT's own stream a segment could read them
    before those kernels finish, or the sampler read an output before ORT wrote it; sharing the
    stream orders them with no device-wide synchronisation per segment.
    """
    providers: list = []
    if "CUDAExecutionProvider" in available and device is not None:
        providers.append(("CUDAExecutionProvider", {"device_id": str(device), "has_user_compute_stream": "1",
                                                    "user_compute_stream": str(stream)}))
    providers.append("CPUExecutionProvider")
    return providers


def check_device(sess, device: torch.device) -> None:
    """Refuse GPU inputs for a session that can only run on the CPU, saying what to install."""
    if device.type == "cuda" and "CUDAExecutionProvider" not in sess.get_providers():
        raise BackendError("the inputs are on a GPU but this onnxruntime has no CUDA execution provider: "
                           "pip install onnxruntime-gpu (instead of onnxruntime), or run on --device cpu")


def _np_dtype(dtype: torch.dtype):
    return torch.empty((), dtype=dtype).numpy().dtype


def lower(program: Program, onnx_dir: Path | None = None, providers: list[str] | None = None,
          onnx_files: dict[str, str] | None = None) -> dict:
    sessions = sessions_for(program, onnx_dir, providers, onnx_files)
    return {path: _runner(program, ops, sessions) for path, ops in program.variants.items()}


def _runner(program: Program, ops: list[Op], sessions: dict):
    direct = outputs_bound_to_caches(program, ops)
    checked: set[str] = set()

    def run(env: dict, caches: dict) -> float:
        flops = 0.0
        batch = program.batch_of(env)
        for i, op in enumerate(ops):
            if not run_cache_op(op, env, caches):
                seg = program.segments[op.segment]
                sess = sessions[op.segment]
                if op.segment not in checked:
                    check_device(sess, env[seg.inputs[0]].device if seg.inputs else torch.device("cpu"))
                    checked.add(op.segment)
                io = sess.io_binding()
                for n in seg.inputs:
                    t = env[n]
                    if not t.is_contiguous():
                        t = env[n] = t.contiguous()
                    io.bind_input(io_name(n), t.device.type, t.device.index or 0, _np_dtype(t.dtype),
                                  list(t.shape), t.data_ptr())
                device = next(iter(env.values())).device
                for n in seg.outputs:
                    out = output_buffer(program, n, batch, direct[i].get(n), caches, device)
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

    def move_problem(self, program, device, **options) -> str | None:
        """Sessions hold the CUDA execution provider whenever onnxruntime-gpu and a GPU are there, and
        bind each step's tensors where they are: a move only needs that provider for the GPU."""
        if device.type == "cuda" and "CUDAExecutionProvider" not in _ort().get_available_providers():
            return (f"onnxruntime {_ort().__version__} here has no CUDA execution provider, so this artifact cannot "
                    f"run on {device}: pip install onnxruntime-gpu (instead of onnxruntime)")
        return super().move_problem(program, device)

    def save(self, out_dir: Path, program, captured) -> dict:
        files = onnx_export.export_program(program, out_dir / "onnx", progress=True)  # looked up late: tests interrupt it
        return {self.lowered_key: {k: f"onnx/{v}" for k, v in files.items()}}

    def artifact_options(self, path: Path, lowered: dict) -> dict:
        return {"onnx_dir": Path(path), "onnx_files": lowered[self.lowered_key]}
