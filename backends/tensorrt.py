"""TensorRT backend: one engine per segment, built from the segment's ONNX file.

One code path for TensorRT (``tensorrt``) and TensorRT-RTX (``tensorrt_rtx``, or the PyPI wheel's
``tensorrt_rtx_bindings``): Builder → OnnxParser → an optimization profile for the dynamic batch
→ ``build_serialized_network``. Networks are strongly typed, so precision is whatever the
exported ONNX says. Engines are built per *segment*, never per variant: the full and cached
variants pick different sequences of the same engines, so weights are never duplicated. Built
plans are cached on disk under a key of the ONNX bytes and the builder settings.

Running needs a CUDA GPU the library supports (TensorRT-RTX does not run on Hopper, compute
capability 9.0). The runtime binds torch CUDA tensors by address (no host copies), runs every
engine on torch's current stream with ``execute_async_v3``, binds an output that the variant
stores into a cache straight to that cache buffer (as ONNX Runtime does), and shares one scratch
buffer across all execution contexts, sized by the largest ``device_memory_size_v2``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import zlib
from pathlib import Path

import torch

from cachec.errors import ArtifactError, BackendError
from cachec.program import Op, Program

from . import onnx_export
from .base import Backend, output_buffer, outputs_bound_to_caches, run_cache_op
from .onnx_export import io_name

MODULES = ("tensorrt", "tensorrt_rtx", "tensorrt_rtx_bindings")
WORKSPACE = 1 << 30
# a plan is stored deflated (``.plan.z``) when that saves at least this share of its bytes
PACK_MIN_SAVING = 0.2
PACK_PROBE = 16 << 20  # bytes deflated before a plan that does not shrink is given up on
PACK_CHUNK = 4 << 20


def check() -> None:
    """Fail early, naming the extra, when a package this backend needs is missing."""
    trt()
    try:
        import onnxscript  # noqa: F401 - engines are built from ONNX exports
    except ImportError as exc:
        raise BackendError("the tensorrt backend exports ONNX first and needs onnxscript: pip install 'cachec[tensorrt]'") from exc


def trt():
    """The first importable TensorRT flavour."""
    for name in MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(mod, "Builder"):
            return mod
    raise BackendError(
        "the tensorrt backend needs TensorRT or TensorRT-RTX Python bindings: pip install 'cachec[tensorrt]'"
    )


_DTYPES = {
    "FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT64": "int64", "INT32": "int32",
    "BOOL": "bool", "INT8": "int8", "UINT8": "uint8", "DOUBLE": "float64",
}


def dtype_name(dt) -> str:
    return _DTYPES.get(dt.name, dt.name.lower())


def settings(max_batch: int, opt_batch: int) -> dict:
    return {"min_batch": 1, "opt_batch": opt_batch, "max_batch": max_batch, "workspace": WORKSPACE}


def cache_dir() -> Path:
    return Path(os.environ.get("CACHEC_TRT_CACHE", Path.home() / ".cache" / "cachec" / "trt"))


def build_engine(onnx_path: Path, max_batch: int, opt_batch: int = 2) -> tuple[bytes, dict]:
    """Parse one ONNX file and build its plan; returns the plan and the network's I/O.

    The I/O (names, shapes with -1 for the batch, dtypes) is what the manifest is checked
    against. Plans are cached under the hash of the ONNX bytes, the settings and the version.
    """
    t = trt()
    data = Path(onnx_path).read_bytes()
    conf = settings(max_batch, opt_batch)
    key = hashlib.sha256(data + json.dumps(conf, sort_keys=True).encode() + t.__version__.encode()).hexdigest()
    cached_plan, cached_io = cache_dir() / f"{key}.plan", cache_dir() / f"{key}.json"
    if cached_plan.exists() and cached_io.exists():
        return cached_plan.read_bytes(), json.loads(cached_io.read_text())
    logger = t.Logger(t.Logger.ERROR)
    builder = t.Builder(logger)
    network = builder.create_network(0)
    parser = t.OnnxParser(network, logger)
    if not parser.parse(data):
        errors = "; ".join(parser.get_error(i).desc() for i in range(parser.num_errors))
        raise BackendError(f"TensorRT could not parse {onnx_path}: {errors}")
    io = {"inputs": [], "outputs": []}
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list(tensor.shape)
        io["inputs"].append({"name": tensor.name, "shape": shape, "dtype": dtype_name(tensor.dtype)})
        if -1 in shape:
            def at(b, shape=shape):
                return tuple(b if d == -1 else d for d in shape)

            profile.set_shape(tensor.name, at(1), at(opt_batch), at(max_batch))
    for i in range(network.num_outputs):
        tensor = network.get_output(i)
        io["outputs"].append({"name": tensor.name, "shape": list(tensor.shape), "dtype": dtype_name(tensor.dtype)})
    config = builder.create_builder_config()
    config.set_memory_pool_limit(t.MemoryPoolType.WORKSPACE, WORKSPACE)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BackendError(f"TensorRT failed to build an engine from {onnx_path}")
    plan = bytes(plan)
    cache_dir().mkdir(parents=True, exist_ok=True)
    tmp = cached_plan.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(plan)
    os.replace(tmp, cached_plan)
    cached_io.write_text(json.dumps(io))
    return plan, io


def expected_io(program: Program, segment: str) -> dict:
    """The I/O a segment's engine must have, from the program's value specs (batch as -1)."""
    seg = program.segments[segment]

    def desc(name):
        spec = program.values[name]
        return {"name": io_name(name), "shape": [-1 if d == "B" else d for d in spec.shape], "dtype": spec.dtype}

    return {"inputs": [desc(n) for n in seg.inputs], "outputs": [desc(n) for n in seg.outputs]}


def build_program_engines(program: Program, onnx_dir: Path, out_dir: Path, progress: bool = False) -> dict:
    """Build a plan per segment into ``out_dir``; check each plan's I/O against the program."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(program.segments)
    if progress:
        from cachec.progress import steps

        names = steps(names, "tensorrt build")  # a bar on a terminal, one line per item in a log
    engines = {}
    for name in names:
        plan, io = build_engine(Path(onnx_dir) / f"{name}.onnx", program.model.max_batch or 1024)
        want = expected_io(program, name)
        if io != want:
            raise BackendError(f"engine {name}: I/O {io} differs from the program's {want}")
        engines[name] = write_plan(out_dir, name, plan)
    return engines


def pack_plan(plan: bytes) -> bytes | None:
    """The plan deflated, or None when that does not save ``PACK_MIN_SAVING`` of it.

    Why: an engine carries a fixed ~0.2 MB of kernels and zero padding besides its weights (a
    layer norm's plan is 187 kB, 18 kB deflated), and a program has an engine per segment, so
    the bundled model's engines were 2.3× its weights although no weight is stored twice.
    Deflating those removes most of the overhead (1.11× with 36 plans). A plan that is mostly weights barely shrinks;
    it is stored as is, and is given up on after ``PACK_PROBE`` bytes so that a FLUX-sized
    plan costs no more than a probe at compile time and nothing at load time.
    """
    packer = zlib.compressobj(1)
    out, seen = [], 0
    for start in range(0, len(plan), PACK_CHUNK):
        chunk = plan[start : start + PACK_CHUNK]
        out.append(packer.compress(chunk))
        seen += len(chunk)
        if seen >= PACK_PROBE and sum(map(len, out)) > (1 - PACK_MIN_SAVING) * seen:
            return None
    out.append(packer.flush())
    packed = b"".join(out)
    return packed if len(packed) <= (1 - PACK_MIN_SAVING) * len(plan) else None


def write_plan(out_dir: Path, name: str, plan: bytes) -> str:
    """Write a segment's plan (deflated when that pays, see :func:`pack_plan`); its file name."""
    packed = pack_plan(plan)
    file = f"{name}.plan.z" if packed is not None else f"{name}.plan"
    (out_dir / file).write_bytes(packed if packed is not None else plan)
    return file


def read_plan(path: Path) -> bytes:
    """A plan as :func:`write_plan` stored it."""
    data = Path(path).read_bytes()
    return zlib.decompress(data) if Path(path).name.endswith(".z") else data


def lower(program: Program, engine_dir: Path | None = None, engine_files: dict[str, str] | None = None) -> dict:
    if not torch.cuda.is_available():
        raise BackendError("TensorRT engines run on a CUDA GPU; none is available here (the build works on CPU)")
    if engine_dir is None or engine_files is None:
        raise BackendError("the tensorrt backend runs a compiled artifact: cachec compile --backend tensorrt --out DIR")
    t = trt()
    logger = t.Logger(t.Logger.ERROR)
    runtime = t.Runtime(logger)
    engines, contexts = {}, {}
    for name, f in engine_files.items():
        engine = runtime.deserialize_cuda_engine(read_plan(Path(engine_dir) / f))
        if engine is None:
            major, minor = torch.cuda.get_device_capability()
            raise BackendError(f"TensorRT could not load {f} on this GPU (compute capability {major}.{minor})")
        engines[name] = engine
        contexts[name] = engine.create_execution_context(t.ExecutionContextAllocationStrategy.USER_MANAGED)
    scratch_size = max((e.device_memory_size_v2 for e in engines.values()), default=0)
    scratch = torch.empty(max(scratch_size, 1), dtype=torch.uint8, device="cuda")
    for ctx in contexts.values():
        ctx.device_memory = scratch.data_ptr()
    return {path: _runner(program, ops, contexts, scratch) for path, ops in program.variants.items()}


def _runner(program: Program, ops: list[Op], contexts: dict, scratch: torch.Tensor):
    direct = outputs_bound_to_caches(program, ops)

    def run(env: dict, caches: dict) -> float:
        flops = 0.0
        stream = torch.cuda.current_stream().cuda_stream
        batch = program.batch_of(env)
        if program.model.max_batch is not None and batch > program.model.max_batch:
            raise BackendError(f"batch {batch} is above the {program.model.max_batch} these engines were built for; "
                               "compile again with a larger --max-batch")
        for i, op in enumerate(ops):
            if not run_cache_op(op, env, caches):
                seg = program.segments[op.segment]
                ctx = contexts[op.segment]
                for n in seg.inputs:
                    x = env[n].contiguous()
                    env[n] = x
                    ctx.set_input_shape(io_name(n), tuple(x.shape))
                    ctx.set_tensor_address(io_name(n), x.data_ptr())
                for n in seg.outputs:
                    out = output_buffer(program, n, batch, direct[i].get(n), caches, "cuda")
                    ctx.set_tensor_address(io_name(n), out.data_ptr())
                    env[n] = out
                if not ctx.execute_async_v3(stream):
                    raise BackendError(f"TensorRT failed to run segment {op.segment}")
                flops += seg.flops
        return flops

    run.scratch = scratch
    return run


def version() -> dict:
    """The installed TensorRT flavour and version (engines load only on the one that built them)."""
    t = trt()
    return {"tensorrt": str(t.__version__), "tensorrt_flavor": "tensorrt-rtx" if "rtx" in t.__name__ else "tensorrt"}


class TensorRTBackend(Backend):
    """An engine per segment, built from the segment's ONNX export; runs on a CUDA GPU."""

    name = "tensorrt"
    devices = ("cuda",)
    writes_artifacts = True
    lowered_key = "engine_files"
    native_code = True  # a serialized engine holds compiled kernels (and may embed plugin code)
    # An engine is optimised for, and reserves activation memory for, its profile's largest
    # shape: at the exported limit (1024) a FLUX-shaped attention segment could not even be
    # built (the builder asked for the attention of 1024 images). Serving batches are small.
    default_max_batch = 16

    def check(self) -> None:
        check()

    def lower(self, program, **options) -> dict:
        return lower(program, **options)

    def save(self, out_dir: Path, program, captured) -> dict:
        import shutil
        import tempfile

        onnx_dir = Path(tempfile.mkdtemp(prefix="cachec-onnx-"))
        try:
            onnx_export.export_program(program, onnx_dir, progress=True)  # looked up late: tests interrupt it
            engines = build_program_engines(program, onnx_dir, out_dir / "engines", progress=True)
            return {self.lowered_key: {k: f"engines/{v}" for k, v in engines.items()}}
        finally:
            shutil.rmtree(onnx_dir, ignore_errors=True)

    def artifact_options(self, path: Path, lowered: dict) -> dict:
        return {"engine_dir": Path(path), "engine_files": lowered[self.lowered_key]}

    def versions(self) -> dict:
        return version()

    def validate_lowered(self, manifest: dict, fail) -> None:
        super().validate_lowered(manifest, fail)
        if "tensorrt" not in manifest["versions"]:
            fail("versions.tensorrt", "is missing (TensorRT engines load only on the version that built them)")

    def check_versions(self, path: Path, manifest: dict, allow_version_mismatch: bool) -> None:
        """Serialized engines deserialize only on the exact TensorRT (flavour and version) that
        built them; no opt-out, as it would fail in the backend anyway."""
        versions = manifest["versions"]
        want = (versions.get("tensorrt_flavor", "tensorrt"), versions["tensorrt"])
        have_d = version()
        have = (have_d["tensorrt_flavor"], have_d["tensorrt"])
        if want != have:
            raise ArtifactError(
                f"{Path(path) / 'engines'}: the engines were built with {want[0]} {want[1]} but {have[0]} {have[1]} is "
                f"installed; TensorRT engines load only on the version that built them: recompile with "
                f"`cachec compile --backend tensorrt`, or install {want[0]} {want[1]}"
            )
