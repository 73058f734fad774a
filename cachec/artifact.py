"""Artifacts: a compiled program on disk, written atomically and verified on load.

Layout of an artifact directory::

    manifest.json        schema version, versions of cachec/torch/diffusers, model, policy and
                         backend, inputs/outputs (names, shapes with B for batch, dtypes),
                         segments (inputs, outputs, FLOPs), variants, cache buffers, checksums
    model.pt2            eager: the captured denoiser (``torch.export.save``), weights included
    onnx/<segment>.onnx  onnxruntime: one ONNX file per segment
    engines/<seg>.plan   tensorrt: one serialized engine per segment

An eager artifact is loaded by re-running the deterministic passes on ``model.pt2`` and checking
that the variants it gets are exactly the manifest's. ONNX and TensorRT artifacts are run from
the manifest's program description and their segment files. None of them needs the model's
Python class or its weight files, and each weight is stored once.
A compile writes into a temporary directory next to the target and renames it into place, so
an interrupted compile leaves nothing behind.

Trust on load: the manifest's structure is checked field by field (:func:`validate_manifest`),
every listed file against its size and SHA-256, and the versions it records against the installed
ones (:func:`check_versions`), so that a corrupt, truncated, foreign, hand-edited or stale
artifact is reported as one :class:`~cachec.errors.ArtifactError` naming the file and the cause
instead of failing somewhere inside the planner or a backend.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from . import __version__
from . import program as desc
from . import schema as sch
from .capture import EXPORT_LOCK, MAX_BATCH, Captured, flatten_exported
from .errors import ArtifactError, PolicyError
from .planner import compile_program
from .policy import parse_policy
from .program import CACHE_PREFIX, DescriptionError, Program, validate_description

FORMAT = "cachec-artifact"
SCHEMA = 1
PROGRAM_FILE = "model.pt2"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions(backend: str = "eager") -> dict:
    """What the artifact was built with. TensorRT engines only load on the TensorRT (flavour and
    version) that built them, so a tensorrt artifact records both."""
    import diffusers

    versions = {"cachec": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__}
    if backend == "tensorrt":
        versions.update(_tensorrt_version())
    return versions


def _tensorrt_version() -> dict:
    from .backends.tensorrt import trt

    t = trt()
    return {"tensorrt": str(t.__version__), "tensorrt_flavor": "tensorrt-rtx" if "rtx" in t.__name__ else "tensorrt"}


def manifest_of(program: Program, captured: Captured, model_spec: str, signature: list[str]) -> dict:
    return {
        "format": FORMAT,
        "schema": SCHEMA,
        "versions": _versions(),
        "model": {"spec": model_spec, "class": captured.model_class, "config": _jsonable(captured.config)},
        "policy": program.meta["policy"],
        "signature": signature,
        "inputs": {
            n: {"shape": ["B" if captured.batch_dims.get(n) == i else d for i, d in enumerate(t.shape)],
                "dtype": str(t.dtype).replace("torch.", "")}
            for n, t in captured.example_inputs.items()
        },
        "output": {"name": program.output, **vars(program.values[program.output])},
        "stream_inputs": captured.stream_inputs,
        "latent_input": captured.latent_input,
        "batch_dims": captured.batch_dims,
        "max_batch": captured.max_batch,
        "example_batch": captured.example_batch,
        "cross_attention": None if captured.cross_attention is None else sorted(captured.cross_attention),
        "blocks": program.meta["blocks"],
        "segments": {
            name: {"role": s.role, "inputs": s.inputs, "outputs": s.outputs, "flops_per_sample": s.flops}
            for name, s in program.segments.items()
        },
        "variants": {name: [list(op) for op in ops] for name, ops in program.paths.items()},
        "caches": {n: vars(v) for n, v in program.caches().items()},
        "signal": program.meta.get("signal"),
        "none_flops_per_sample": program.meta.get("none_flops"),
        "files": {},
    }


def _jsonable(obj):
    try:
        return json.loads(json.dumps(dict(obj), default=lambda o: list(o) if isinstance(o, tuple) else str(o)))
    except (TypeError, ValueError):
        return {}


def _write_backend_files(tmp: Path, backend: str, program: Program, captured: Captured) -> dict:
    """Write the lowered program; returns what the manifest records about it."""
    if backend == "eager":
        torch.export.save(captured.exported, str(tmp / PROGRAM_FILE))
        return {}
    from .backends.onnx_export import export_program

    onnx_dir = tmp / "onnx" if backend == "onnxruntime" else Path(tempfile.mkdtemp(prefix="cachec-onnx-"))
    try:
        onnx_files = export_program(program, onnx_dir, progress=True)
        if backend == "onnxruntime":
            return {"onnx_files": {k: f"onnx/{v}" for k, v in onnx_files.items()}}
        from .backends.tensorrt import build_program_engines

        engines = build_program_engines(program, onnx_dir, tmp / "engines", progress=True)
        return {"engine_files": {k: f"engines/{v}" for k, v in engines.items()}}
    finally:
        if backend != "onnxruntime":
            shutil.rmtree(onnx_dir, ignore_errors=True)


def weight_bytes(captured: Captured) -> int:
    """Bytes of the model's parameters and buffers (each tensor counted once)."""
    seen, total = set(), 0
    for t in list(captured.exported.state_dict.values()) + list(captured.exported.constants.values()):
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def save(out: str | Path, program: Program, captured: Captured, model_spec: str, signature: list[str],
         force: bool = False, backend: str = "eager") -> Path:
    """Write the artifact to ``out`` atomically (temporary directory, then rename)."""
    out = Path(out)
    if out.exists() and not force:
        raise ArtifactError(f"{out} already exists; choose another --out or pass --force to replace it")
    if program.meta.get("tokens"):  # ToCa / DuCa variants run on some backends only
        from .token_planner import check_token_backend

        check_token_backend(backend, program.meta["policy"])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        lowered = _write_backend_files(tmp, backend, program, captured)
        manifest = manifest_of(program, captured, model_spec, signature)
        manifest["versions"] = _versions(backend)
        manifest["backend"] = backend
        manifest["lowered"] = lowered
        manifest["program"] = program.describe()
        files = [p for p in sorted(tmp.rglob("*")) if p.is_file()]
        manifest["files"] = {
            str(p.relative_to(tmp)): {"sha256": sha256(p), "bytes": p.stat().st_size} for p in files
        }
        manifest["artifact_bytes"] = sum(f["bytes"] for f in manifest["files"].values())
        manifest["weight_bytes"] = weight_bytes(captured)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, old)
            try:
                os.rename(tmp, out)
            except BaseException:
                os.rename(old, out)  # --force must not lose the old artifact when the swap fails
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_manifest(path: str | Path) -> dict:
    """Read and verify an artifact's manifest: format, schema, structure (:func:`validate_manifest`)
    and every listed file's size and checksum. Raises :class:`ArtifactError` naming the file."""
    path = Path(path)
    mf = path / "manifest.json"
    if not path.is_dir():
        raise ArtifactError(f"{path} is not a directory; an artifact is the directory `cachec compile --out` wrote")
    if not mf.is_file():
        raise ArtifactError(f"{path} has no manifest.json: not a cachec artifact (or an interrupted copy)")
    try:
        manifest = json.loads(mf.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{mf} is corrupt: not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise ArtifactError(f"{mf} is corrupt: nested too deeply to be a manifest") from exc
    except OSError as exc:
        raise ArtifactError(f"{mf} cannot be read: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{mf} is not a cachec manifest (format field is not {FORMAT!r})")
    if manifest.get("schema") != SCHEMA:
        raise ArtifactError(
            f"{mf} has manifest schema {manifest.get('schema')!r}; this cachec (version {__version__}) reads "
            f"schema {SCHEMA}: recompile the model with this cachec, or install the cachec that wrote it"
        )
    validate_manifest(manifest, path)
    for name, info in manifest["files"].items():
        f = path / name
        if not f.is_file():
            raise ArtifactError(f"{f} is missing (listed in the manifest): the artifact is incomplete")
        if f.stat().st_size != info["bytes"] or sha256(f) != info["sha256"]:
            raise ArtifactError(f"{f} does not match its checksum in the manifest: the file is corrupt or truncated")
    return manifest


# ---------------------------------------------------------------------------------------------
# manifest structure (checkers from cachec.program: each takes (value, where) and raises Mismatch)

FILE = sch.record({"sha256": sch.SHA, "bytes": sch.NAT})
SEGMENT_FILES = sch.map_of(sch.NAME)

MANIFEST = sch.record({
    "format": sch.STR,
    "schema": sch.NAT,
    "versions": sch.record({"cachec": sch.STR, "torch": sch.STR, "diffusers": sch.STR}, {"tensorrt": sch.STR, "tensorrt_flavor": sch.STR}),
    "model": sch.record({"spec": sch.STR, "class": sch.NAME, "config": sch.map_of(sch.ANY)}),
    "policy": sch.NAME,
    "signature": sch.list_of(sch.NAME),
    "inputs": sch.map_of(desc.VALUE_SPEC),
    "output": sch.record({"name": sch.NAME, "shape": sch.list_of(sch.DIM), "dtype": sch.DTYPE}),
    "stream_inputs": sch.list_of(sch.NAME),
    "latent_input": sch.NAME,
    "batch_dims": sch.map_of(sch.NAT),
    "max_batch": sch.POS,
    "example_batch": sch.POS,
    "cross_attention": sch.nullable(sch.list_of(sch.STR)),
    "blocks": sch.list_of(sch.NAME),
    "segments": sch.map_of(desc.SEGMENT),
    "variants": desc.VARIANTS,
    "caches": sch.map_of(desc.VALUE_SPEC),
    "signal": sch.nullable(sch.NAME),
    "none_flops_per_sample": sch.nullable(sch.NUM),
    "files": sch.map_of(FILE),
    "backend": sch.one_of("eager", "onnxruntime", "tensorrt"),
    "lowered": sch.record({}, {"onnx_files": SEGMENT_FILES, "engine_files": SEGMENT_FILES}),
    "program": sch.map_of(sch.ANY),  # checked by program.validate_description
    "artifact_bytes": sch.NAT,
    "weight_bytes": sch.NAT,
})

_LOWERED_KEY = {"onnxruntime": "onnx_files", "tensorrt": "engine_files"}


def validate_manifest(manifest, path: str | Path) -> None:
    """Check every field an artifact load reads: keys, types and cross-references.

    Why hand-written and total: a manifest is user-editable JSON, and a missing key or a wrong
    type would otherwise surface as a KeyError/TypeError deep inside planning or a backend. Every
    problem is one :class:`ArtifactError` naming ``path/manifest.json`` and the dotted field.
    """
    mf = Path(path) / "manifest.json"

    def fail(where: str, problem: str):
        raise ArtifactError(f"{mf} is malformed: field {where!r} {problem}; recompile the artifact "
                            "(cachec compile) or restore the manifest from the original")

    try:
        MANIFEST(manifest, "")
    except sch.Mismatch as bad:
        fail(bad.where, bad.problem())
    try:
        parse_policy(manifest["policy"])
    except PolicyError as exc:
        fail("policy", f"is not a valid policy ({exc})")
    for name in manifest["files"]:
        parts = Path(name).parts
        if not name or Path(name).is_absolute() or ".." in parts or name == "manifest.json":
            fail(f"files.{name}", "is not a file inside the artifact directory")
    if manifest["max_batch"] > MAX_BATCH:
        fail("max_batch", f"is {manifest['max_batch']}, above the largest batch cachec exports ({MAX_BATCH})")
    if manifest["example_batch"] > manifest["max_batch"]:
        fail("example_batch", f"is {manifest['example_batch']}, above max_batch {manifest['max_batch']}")
    inputs = manifest["inputs"]
    if not inputs:
        fail("inputs", "should name at least one input")
    if manifest["latent_input"] not in inputs:
        fail("latent_input", f"names {manifest['latent_input']!r}, which is not one of the inputs {list(inputs)}")
    for i, n in enumerate(manifest["stream_inputs"]):
        if n not in inputs:
            fail(f"stream_inputs[{i}]", f"names {n!r}, which is not one of the inputs {list(inputs)}")
    for n, dim in manifest["batch_dims"].items():
        if n not in inputs or dim >= len(inputs[n]["shape"]) or inputs[n]["shape"][dim] != "B":
            fail(f"batch_dims.{n}", "does not point at a batch dimension \"B\" of an input")
    try:
        validate_description(manifest["program"])
    except DescriptionError as exc:
        fail(f"program.{exc.where}", exc.problem)
    # the manifest's top-level view and its program description are written from the same
    # program: a disagreement means hand-editing or two artifacts mixed (the runtime reads one,
    # the CLI and the eager check the other)
    prog, meta = manifest["program"], manifest["program"]["meta"]
    values = prog["values"]
    mirrored = {
        "inputs": (list(manifest["inputs"]), prog["inputs"], "program.inputs"),
        "output": (manifest["output"], {"name": prog["output"], **values[prog["output"]]}, "program.values"),
        "segments": (manifest["segments"], prog["segments"], "program.segments"),
        "variants": (manifest["variants"], prog["variants"], "program.variants"),
        "caches": (manifest["caches"], {n: v for n, v in values.items() if n.startswith(CACHE_PREFIX)},
                   "program.values"),
        "policy": (manifest["policy"], meta["policy"], "program.meta.policy"),
        "blocks": (manifest["blocks"], meta["blocks"], "program.meta.blocks"),
        "batch_dims": (manifest["batch_dims"], meta.get("batch_dims"), "program.meta.batch_dims"),
        "max_batch": (manifest["max_batch"], meta.get("max_batch"), "program.meta.max_batch"),
        "signal": (manifest["signal"], meta.get("signal"), "program.meta.signal"),
        "none_flops_per_sample": (manifest["none_flops_per_sample"], meta.get("none_flops"), "program.meta.none_flops"),
    }
    for field, (top, described, where) in mirrored.items():
        if top != described:
            fail(field, f"disagrees with {where}: the manifest was edited or mixes two artifacts")
    backend = manifest["backend"]
    if backend != "eager":
        key = _LOWERED_KEY[backend]
        files = manifest["lowered"].get(key)
        if files is None:
            fail(f"lowered.{key}", f"is missing (a {backend} artifact lists one file per segment)")
        segments = manifest["program"]["segments"]
        for seg in segments:
            if seg not in files:
                fail(f"lowered.{key}", f"has no file for segment {seg!r}")
        for seg, f in files.items():
            if seg not in segments:
                fail(f"lowered.{key}.{seg}", "names a segment the program does not have")
            if f not in manifest["files"]:
                fail(f"lowered.{key}.{seg}", f"names {f}, which is not among the checksummed files")
        if backend == "tensorrt" and "tensorrt" not in manifest["versions"]:
            fail("versions.tensorrt", "is missing (TensorRT engines load only on the version that built them)")
    elif PROGRAM_FILE not in manifest["files"]:
        fail("files", f"does not list {PROGRAM_FILE}, the captured program of an eager artifact")


# ---------------------------------------------------------------------------------------------
# versions


def _major_minor(text: str) -> tuple[int, int] | None:
    m = re.match(r"\s*v?(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def check_versions(path: str | Path, manifest: dict, allow_version_mismatch: bool = False) -> None:
    """Refuse an artifact the installed packages cannot be trusted to run.

    * written by a newer cachec (major.minor) than the installed one: its meaning may have changed
      even within the same schema;
    * eager artifacts: ``model.pt2`` is a ``torch.export`` file, whose format is only promised to
      load on the torch (major.minor) that wrote it;
    * tensorrt artifacts: serialized engines deserialize only on the exact TensorRT (flavour and
      version) that built them; no opt-out, as it would fail in the backend anyway.

    ``allow_version_mismatch`` turns the first two into a warning-free attempt (the user's call).
    """
    path = Path(path)
    versions = manifest["versions"]
    hint = "; pass allow_version_mismatch=True (CLI: --allow-version-mismatch) to try anyway"
    for pkg in ("cachec", "torch"):
        if _major_minor(versions[pkg]) is None:
            raise ArtifactError(f"{path / 'manifest.json'} is malformed: field 'versions.{pkg}' is "
                                f"{versions[pkg]!r}, not a version")
    if not allow_version_mismatch:
        if _major_minor(versions["cachec"]) > _major_minor(__version__):
            raise ArtifactError(
                f"{path} was written by cachec {versions['cachec']}, newer than the installed cachec {__version__}: "
                f"upgrade cachec, or recompile the model with this one{hint}"
            )
        if manifest["backend"] == "eager" and _major_minor(versions["torch"]) != _major_minor(torch.__version__):
            raise ArtifactError(
                f"{path / PROGRAM_FILE} was exported with torch {versions['torch']} but torch {torch.__version__} "
                f"is installed; torch.export files are only guaranteed to load on the torch version that wrote "
                f"them: recompile the artifact with this torch{hint}"
            )
    if manifest["backend"] == "tensorrt":
        want = (versions.get("tensorrt_flavor", "tensorrt"), versions["tensorrt"])
        have_d = _tensorrt_version()
        have = (have_d["tensorrt_flavor"], have_d["tensorrt"])
        if want != have:
            raise ArtifactError(
                f"{path / 'engines'}: the engines were built with {want[0]} {want[1]} but {have[0]} {have[1]} is "
                f"installed; TensorRT engines load only on the version that built them: recompile with "
                f"`cachec compile --backend tensorrt`, or install {want[0]} {want[1]}"
            )


_LOWERED_FILES = {"onnxruntime": "onnx_dir", "tensorrt": "engine_dir"}


def runtime_backend(path: str | Path, manifest: dict, backend: str | None = None) -> tuple[str, dict]:
    """The backend an artifact runs on and the options that point it at the artifact's files.

    An eager artifact holds the captured program, so any backend can lower it; an ONNX Runtime or
    TensorRT artifact holds lowered segment files only and runs on its own backend.
    """
    own = manifest.get("backend", "eager")
    if own == "eager":
        return backend or "eager", {}
    if backend not in (None, own):
        raise ArtifactError(
            f"{path} was compiled for the {own} backend and holds only its lowered files; run it with "
            f"backend={own!r}, or compile the model for {backend!r}"
        )
    return own, {_LOWERED_FILES[own]: Path(path)}


def load_program(path: str | Path, policy: str | None = None, *,
                 allow_version_mismatch: bool = False) -> tuple[Program, dict]:
    """Load and verify an artifact; returns the rebuilt program and its manifest.

    ``policy`` plans another policy on the same captured model (``cachec run`` uses it for the
    ``none`` baseline); only the artifact's own policy is checked against the manifest.
    ``allow_version_mismatch`` tries an artifact written by a newer cachec or (eager) another
    torch anyway (see :func:`check_versions`); a TensorRT mismatch is always an error.
    Every problem with the artifact is an :class:`ArtifactError` naming the file and the cause.
    """
    path = Path(path)
    manifest = read_manifest(path)
    check_versions(path, manifest, allow_version_mismatch)
    if manifest["backend"] != "eager":
        program = Program.from_description(manifest["program"])
        program.meta.update(manifest["lowered"])
        if policy is not None:
            compiled = parse_policy(manifest["policy"])
            if parse_policy(policy).name not in ("none", compiled.name):
                raise ArtifactError(f"{path} holds variants for {compiled.spec}; it cannot run {policy!r}")
        return program, manifest
    try:
        with EXPORT_LOCK:
            ep = torch.export.load(str(path / PROGRAM_FILE))
    except Exception as exc:  # noqa: BLE001 - any failure to deserialise is a corrupt artifact
        raise ArtifactError(f"{path / PROGRAM_FILE} could not be loaded by torch {torch.__version__}: {exc}") from exc
    inputs = manifest["inputs"]
    exported = _exported_inputs(ep)
    if exported != inputs:
        raise ArtifactError(
            f"{path / 'manifest.json'}: its inputs {json.dumps(inputs)} differ from those of {PROGRAM_FILE} "
            f"{json.dumps(exported)}; the manifest was edited or belongs to another artifact"
        )
    batch = manifest["example_batch"]
    examples = {
        n: torch.zeros([batch if d == "B" else d for d in spec["shape"]], dtype=getattr(torch, spec["dtype"]))
        for n, spec in inputs.items()
    }
    captured = Captured(
        graph_module=flatten_exported(ep, list(inputs)),
        input_names=list(inputs),
        output_name=manifest["output"]["name"],
        stream_inputs=manifest["stream_inputs"],
        latent_input=manifest["latent_input"],
        model_class=manifest["model"]["class"],
        config=manifest["model"]["config"],
        example_inputs=examples,
        batch_dims=manifest["batch_dims"],
        cross_attention=None if manifest["cross_attention"] is None else set(manifest["cross_attention"]),
        max_batch=manifest["max_batch"],
        exported=ep,
    )
    try:
        chosen = parse_policy(policy or manifest["policy"])
        compiled = parse_policy(manifest["policy"])
        data = manifest["program"]["meta"].get("policy_data")
        if chosen.needs_data and data is not None and chosen.data_source() == compiled.data_source():
            chosen.data = data  # calibration resolved at compile time: the artifact needs no file
        program = compile_program(captured, chosen)
    except PolicyError as exc:
        if policy is not None:
            raise  # the caller's policy does not fit this model: their mistake, not the artifact's
        raise ArtifactError(
            f"{path / 'manifest.json'}: its policy {manifest['policy']!r} cannot be planned on {PROGRAM_FILE} "
            f"({exc}); the manifest was edited or belongs to another artifact"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - see below
        # compile planned this very model.pt2 with these settings, so replanning is deterministic
        # and cannot fail for an authentic manifest: the settings it feeds the planner (streams,
        # latent, batch dims, ...) were edited. Chained, so --debug shows where it failed.
        raise ArtifactError(
            f"{path / 'manifest.json'}: the program cannot be rebuilt from {PROGRAM_FILE} with the manifest's "
            f"settings ({exc}); the manifest was edited or belongs to another artifact"
        ) from exc
    if policy is not None and parse_policy(policy).spec != parse_policy(manifest["policy"]).spec:
        return program, manifest
    got = {name: [list(op) for op in ops] for name, ops in program.paths.items()}
    if got != manifest["variants"] or sorted(program.segments) != sorted(manifest["segments"]):
        raise ArtifactError(f"{path}: the program rebuilt from {PROGRAM_FILE} differs from the manifest's variants")
    return program, manifest


def _exported_inputs(ep: torch.export.ExportedProgram) -> dict:
    """The user inputs of an exported program as a manifest records them (symbolic dims as "B")."""
    user = set(ep.graph_signature.user_inputs)
    out = {}
    for n in ep.graph.nodes:
        val = n.meta.get("val")
        if n.op == "placeholder" and n.name in user and isinstance(val, torch.Tensor):
            out[n.name] = {"shape": [d if isinstance(d, int) else "B" for d in val.shape],
                           "dtype": str(val.dtype).replace("torch.", "")}
    return out
