"""Artifacts: a compiled program on disk, written atomically and verified on load.

Layout of an artifact directory::

    manifest.json   schema version, versions of cachec/torch/diffusers, model and policy,
                    inputs/outputs (names, shapes with B for batch, dtypes), segments (inputs,
                    outputs, FLOPs), paths (the variants), cache buffers, file checksums
    model.pt2       the captured denoiser (``torch.export.save``), weights included

Loading re-runs the deterministic passes on ``model.pt2`` and checks that the segments and
paths it gets are exactly the ones the manifest lists, so a manifest can never describe a
program other than the one that runs. Nothing needs the model's Python class or weight files.
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
        "cross_attention": sorted(captured.cross_attention),
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


def save(out: str | Path, program: Program, captured: Captured, model_spec: str, signature: list[str],
         force: bool = False) -> Path:
    """Write the artifact to ``out`` atomically (temporary directory, then rename)."""
    out = Path(out)
    if out.exists() and not force:
        raise ArtifactError(f"{out} already exists; choose another --out or pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        torch.export.save(captured.exported, str(tmp / PROGRAM_FILE))
        manifest = manifest_of(program, captured, model_spec, signature)
        manifest["files"] = {PROGRAM_FILE: {"sha256": sha256(tmp / PROGRAM_FILE), "bytes": (tmp / PROGRAM_FILE).stat().st_size}}
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


def load_program(path: str | Path, policy: str | None = None) -> tuple[Program, dict]:
    """Load and verify an artifact; returns the rebuilt program and its manifest.

    ``policy`` plans another policy on the same captured model (``cachec run`` uses it for the
    ``none`` baseline); only the artifact's own policy is checked against the manifest.
    """
    path = Path(path)
    manifest = read_manifest(path)
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
        cross_attention=set(manifest["cross_attention"]),
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
