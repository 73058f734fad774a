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
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from . import __version__
from .capture import Captured, _flatten
from .errors import ArtifactError
from .planner import Planner
from .policy import parse_policy
from .program import Program

FORMAT = "cachec-artifact"
SCHEMA = 1
PROGRAM_FILE = "model.pt2"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions() -> dict:
    import diffusers

    return {"cachec": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__}


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
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        lowered = _write_backend_files(tmp, backend, program, captured)
        manifest = manifest_of(program, captured, model_spec, signature)
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
            os.rename(tmp, out)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    mf = path / "manifest.json"
    if not path.is_dir():
        raise ArtifactError(f"{path} is not a directory; an artifact is the directory `cachec compile --out` wrote")
    if not mf.exists():
        raise ArtifactError(f"{path} has no manifest.json: not a cachec artifact (or an interrupted copy)")
    try:
        manifest = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{mf} is corrupt: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{mf} is not a cachec manifest (format field is not {FORMAT!r})")
    if manifest.get("schema") != SCHEMA:
        raise ArtifactError(f"{mf} has manifest schema {manifest.get('schema')}; this cachec reads schema {SCHEMA}")
    for name, info in manifest.get("files", {}).items():
        f = path / name
        if not f.exists():
            raise ArtifactError(f"{f} is missing (listed in the manifest)")
        if f.stat().st_size != info.get("bytes") or sha256(f) != info.get("sha256"):
            raise ArtifactError(f"{f} does not match its checksum in the manifest: the file is corrupt or truncated")
    return manifest


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


def load_program(path: str | Path, policy: str | None = None) -> tuple[Program, dict]:
    """Load and verify an artifact; returns the rebuilt program and its manifest.

    ``policy`` plans another policy on the same captured model (``cachec run`` uses it for the
    ``none`` baseline); only the artifact's own policy is checked against the manifest.
    """
    path = Path(path)
    manifest = read_manifest(path)
    if manifest.get("backend", "eager") != "eager":
        program = Program.from_description(manifest["program"])
        program.meta.update(manifest["lowered"])
        if policy is not None:
            compiled = parse_policy(manifest["policy"])
            if parse_policy(policy).name not in ("none", compiled.name):
                raise ArtifactError(f"{path} holds variants for {compiled.spec}; it cannot run {policy!r}")
        return program, manifest
    try:
        ep = torch.export.load(str(path / PROGRAM_FILE))
    except Exception as exc:  # noqa: BLE001 - any failure to deserialise is a corrupt artifact
        raise ArtifactError(f"{path / PROGRAM_FILE} could not be loaded by torch {torch.__version__}: {exc}") from exc
    inputs = manifest["inputs"]
    batch = manifest["example_batch"]
    examples = {
        n: torch.zeros([batch if d == "B" else d for d in spec["shape"]], dtype=getattr(torch, spec["dtype"]))
        for n, spec in inputs.items()
    }
    captured = Captured(
        graph_module=_flatten(ep, list(inputs)),
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
    planner = Planner(captured)
    program = planner.plan(parse_policy(policy or manifest["policy"]))
    program.meta["none_flops"] = sum(s.flops for s in planner.segments.values())
    if policy is not None and parse_policy(policy).spec != parse_policy(manifest["policy"]).spec:
        return program, manifest
    got = {name: [list(op) for op in ops] for name, ops in program.paths.items()}
    if got != manifest["variants"] or sorted(program.segments) != sorted(manifest["segments"]):
        raise ArtifactError(f"{path}: the program rebuilt from {PROGRAM_FILE} differs from the manifest's variants")
    return program, manifest
