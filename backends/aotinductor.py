"""AOTInductor backend: each variant compiled ahead of time into a deployable package.

``cachec compile --backend aotinductor`` fuses each variant (as the eager and Inductor backends
do), exports it with a dynamic batch and compiles it with AOTInductor into
``aoti/<variant>.pt2`` — machine code for the device it was compiled on, loadable without the
model's Python class, without cachec's planner and without recompiling (``torch._inductor.
aoti_load_package``).

Why the weights live outside the packages: AOTInductor packs a model's constants into its
shared library by default, so a program with a full and a cached variant would store most
weights twice (a dynamic policy: four times). Here every package is compiled with
``package_constants_in_so=False`` and the weights are written once, by their names in the
captured model, to ``weights.safetensors``. Loading reads that file once onto the package's
device and hands the *same* tensors to every variant (``load_constants(user_managed=True)``):
weights are stored once on disk and held once in memory. The same user-managed tensors let
``rt.load_weights(state_dict)`` swap in weights of the same shapes without recompiling
(:mod:`cachec.weights`): it copies into them in place, and every package reads the new values.

A package runs on the device type it was compiled for (its kernels are C++ for the CPU, Triton
for CUDA), so the artifact records it and refuses inputs elsewhere. Shapes are static apart from
the batch, so token variants (whose selected token count changes) are not supported.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cachec.errors import ArtifactError, BackendError, ShapeError
from cachec.passes.infra import ready
from cachec.program import Program

from .base import Backend
from .eager import fused_runner
from .onnx_export import example_value, quiet_exporter

PACKAGE_DIR = "aoti"
WEIGHTS_FILE = "weights.safetensors"
EXAMPLE_BATCH = 2
# weights stay out of the shared libraries (written once, see above); no line tables: they were
# 70 % of a package's bytes (1.35 of 1.9 MB per variant of the bundled model) and serve debuggers only
INDUCTOR_CONFIGS = {"aot_inductor.package_constants_in_so": False, "aot_inductor.enable_line_tables": False}


def _fused(program: Program, path: str):
    from cachec.planner.fuse import fuse_variant

    return fuse_variant(program.segments, program.variants[path], program.needed_after(path))


def _export(program: Program, fused) -> torch.export.ExportedProgram:
    """The fused variant exported with the batch dynamic wherever the value specs say ``B``."""
    from torch.export import Dim

    names = list(fused.inputs) + list(fused.cache_inputs)
    specs = [program.values[n] for n in names]
    device = next((t.device for t in fused.module.state_dict().values()), torch.device("cpu"))
    args = tuple(example_value(s.shape, s.dtype, EXAMPLE_BATCH).to(device) for s in specs)
    batch = Dim("batch", min=1, max=program.model.max_batch or 1024)
    dynamic = tuple({i: batch for i, d in enumerate(s.shape) if d == "B"} or None for s in specs)
    try:
        with quiet_exporter():
            return torch.export.export(ready(fused.module), args, dynamic_shapes=dynamic if any(dynamic) else None,
                                       strict=False)
    except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds; the cause is kept
        raise BackendError(f"AOTInductor: the fused variant could not be exported ({type(exc).__name__}: {exc})") from exc


def _named_weights(ep: torch.export.ExportedProgram) -> dict[str, torch.Tensor]:
    """The constants a package expects, by their fully qualified names in the captured model."""
    return {**ep.state_dict, **ep.constants}


def save_packages(program: Program, out_dir: Path, progress: bool = False) -> dict:
    """Compile every variant into ``out_dir/aoti/<variant>.pt2`` and write the weights once.

    Returns what the manifest's ``lowered`` records: the package of each variant with its I/O
    (the runtime calls a package positionally), the weights file and the device type.
    """
    from safetensors.torch import save_file
    from torch._inductor import aoti_compile_and_package

    (out_dir / PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
    names = list(program.variants)
    if progress:
        from cachec.progress import steps

        names = steps(names, "aotinductor compile")  # a bar on a terminal, one line per item in a log
    packages, weights, device = {}, {}, None
    for path in names:
        fused = _fused(program, path)
        ep = _export(program, fused)
        for fqn, t in _named_weights(ep).items():
            if fqn in weights and weights[fqn] is not t and not torch.equal(weights[fqn], t):
                raise BackendError(f"AOTInductor: two variants name different tensors {fqn!r}")
            weights.setdefault(fqn, t)
            device = device or t.device.type
        file = f"{PACKAGE_DIR}/{path}.pt2"
        try:
            with quiet_exporter():
                aoti_compile_and_package(ep, package_path=str(out_dir / file), inductor_configs=INDUCTOR_CONFIGS)
        except Exception as exc:  # noqa: BLE001 - a compiler failure of any kind, cause kept
            raise BackendError(f"AOTInductor could not compile variant {path!r} ({type(exc).__name__}: {exc})") from exc
        _compact(out_dir / file)
        packages[path] = {"file": file, "inputs": list(fused.inputs), "cache_inputs": list(fused.cache_inputs),
                          "outputs": list(fused.outputs), "cache_outputs": list(fused.cache_outputs),
                          "flops": fused.flops}
    # safetensors refuses tensors that share memory: store each storage once, aliases by name
    first_of: dict[tuple, str] = {}
    unique, aliases = {}, {}
    for fqn, t in weights.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if key in first_of:
            aliases[fqn] = first_of[key]
        else:
            first_of[key] = fqn
            unique[fqn] = t.detach().to("cpu").contiguous()
    save_file(unique, str(out_dir / WEIGHTS_FILE))
    return {"aoti_packages": packages, "aoti_weights": {"file": WEIGHTS_FILE, "aliases": aliases},
            "aoti_device": device or "cpu"}


def _compact(package: Path) -> None:
    """Rewrite a package without the generated C++ sources of a compiled library, deflated.

    Why: AOTInductor keeps the wrapper and kernel sources (``*.cpp``) next to the library it built
    from them and stores every member uncompressed. A package whose library is present never reads
    its sources (they are for debugging and for rebuilding), and machine code deflates about 3×:
    a variant of the bundled model went from 0.69 MB to 0.16 MB, which is what brings its artifact
    from 1.18× to 1.04× its weights. ``aoti_load_package`` extracts deflated members as it does
    stored ones.
    """
    import zipfile

    with zipfile.ZipFile(package) as src:
        members = [(info, src.read(info)) for info in src.infolist()]
    libraries = {info.filename.rsplit("/", 1)[0] for info, _ in members if info.filename.endswith(".so")}
    kept = [(info, data) for info, data in members
            if not (info.filename.endswith(".cpp") and info.filename.rsplit("/", 1)[0] in libraries)]
    tmp = package.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w") as out:
        for info, data in kept:
            info.compress_type = zipfile.ZIP_DEFLATED if len(data) > 1024 else zipfile.ZIP_STORED
            out.writestr(info, data)
    tmp.replace(package)


def lower(program: Program, package_dir: Path | None = None, aoti_packages: dict | None = None,
          aoti_weights: dict | None = None, aoti_device: str = "cpu") -> dict:
    """The runners of an artifact's packages (``package_dir`` and what its manifest's ``lowered``
    records: :meth:`AOTInductorBackend.artifact_options`)."""
    packages = aoti_packages
    if package_dir is None or packages is None or aoti_weights is None:
        raise BackendError("the aotinductor backend runs a compiled artifact: "
                           "cachec compile --backend aotinductor --out DIR")
    from safetensors.torch import load_file
    from torch._inductor import aoti_load_package

    device = aoti_device
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendError(f"{package_dir} was compiled for CUDA by AOTInductor and no GPU is available here; "
                           "compile it again with --device cpu to run on the CPU")
    spec = aoti_weights
    weights = load_file(str(Path(package_dir) / spec["file"]), device=device)
    weights.update({fqn: weights[target] for fqn, target in spec["aliases"].items()})
    runners = {}
    for path, entry in packages.items():
        try:
            model = aoti_load_package(str(Path(package_dir) / entry["file"]))
            wanted = model.get_constant_fqns()
            missing = [n for n in wanted if n not in weights]
            if missing:
                raise ArtifactError(f"{Path(package_dir) / spec['file']} lacks weights {missing[:3]} of variant {path!r}")
            model.load_constants({n: weights[n] for n in wanted}, check_full_update=True, user_managed=True)
        except ArtifactError:
            raise
        except Exception as exc:  # noqa: BLE001 - a package this torch cannot load
            raise ArtifactError(f"{Path(package_dir) / entry['file']} could not be loaded by torch "
                                f"{torch.__version__} ({type(exc).__name__}: {exc})") from exc
        runners[path] = _runner(entry, model, device)
        runners[path].user_weights = weights  # the same tensors every package reads: rt.load_weights copies into them
    return runners


def _runner(entry: dict, model, device: str):
    def call(*args):
        if args and args[0].device.type != device:
            raise ShapeError(f"this AOTInductor artifact was compiled for {device}; the inputs are on "
                             f"{args[0].device} (move them, or compile it again with --device {args[0].device.type})")
        return model(*[a.contiguous() for a in args])

    run = fused_runner(call, entry["inputs"], entry["cache_inputs"], entry["outputs"], entry["cache_outputs"],
                       float(entry["flops"]))
    run.model = model
    return run


class AOTInductorBackend(Backend):
    """Ahead-of-time compiled variant packages plus one weights file; no Python model needed."""

    name = "aotinductor"
    devices = ("cpu", "cuda")  # the one it was compiled for
    writes_artifacts = True
    native_code = True  # each package is a shared library, run by aoti_load_package

    def check(self) -> None:
        try:
            from torch._inductor import aoti_compile_and_package  # noqa: F401
        except ImportError as exc:
            raise BackendError(f"the aotinductor backend needs torch >= 2.6 with Inductor (have {torch.__version__})") from exc

    def lower(self, program, **options) -> dict:
        return lower(program, **options)

    def move_problem(self, program, device, aoti_device: str = "cpu", **options) -> str | None:
        """A package is machine code for the device type it was compiled for."""
        compiled_for = aoti_device
        if device.type != compiled_for:
            return (f"this AOTInductor artifact was compiled for {compiled_for} and cannot run on {device}: "
                    f"compile it again with --device {device.type}")
        return super().move_problem(program, device)

    def save(self, out_dir: Path, program, captured) -> dict:
        return save_packages(program, out_dir, progress=True)

    def artifact_options(self, path: Path, lowered: dict) -> dict:
        return {"package_dir": Path(path), **{k: lowered[k] for k in ("aoti_packages", "aoti_weights", "aoti_device")}}

    def validate_lowered(self, manifest: dict, fail) -> None:
        lowered = manifest["lowered"]
        for key in ("aoti_packages", "aoti_weights", "aoti_device"):
            if key not in lowered:
                fail(f"lowered.{key}", "is missing (an aotinductor artifact lists its packages, weights and device)")
        packages = lowered["aoti_packages"]
        variants = manifest["program"]["variants"]
        for v in variants:
            if v not in packages:
                fail("lowered.aoti_packages", f"has no package for variant {v!r}")
        for v, entry in packages.items():
            if v not in variants:
                fail(f"lowered.aoti_packages.{v}", "names a variant the program does not have")
            if entry["file"] not in manifest["files"]:
                fail(f"lowered.aoti_packages.{v}.file", f"names {entry['file']}, which is not among the checksummed files")
        if lowered["aoti_weights"]["file"] not in manifest["files"]:
            fail("lowered.aoti_weights.file", "is not among the checksummed files")
        if lowered["aoti_device"] not in self.devices:
            fail("lowered.aoti_device", f"is {lowered['aoti_device']!r}; accepted: {', '.join(self.devices)}")

    def check_versions(self, path: Path, manifest: dict, allow_version_mismatch: bool) -> None:
        """A package's machine code calls into the torch that compiled it: same major.minor only."""
        from .base import major_minor

        want, have = manifest["versions"]["torch"], torch.__version__
        if major_minor(want) != major_minor(have) and not allow_version_mismatch:
            raise ArtifactError(f"{path} holds AOTInductor packages compiled by torch {want}; torch {have} is "
                                "installed: compile it again, or pass --allow-version-mismatch to try anyway")
