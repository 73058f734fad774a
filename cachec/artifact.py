"""Artifacts: a compiled program on disk, written atomically and verified on load.

Layout of an artifact directory::

    manifest.json        schema version, versions of cachec/torch/diffusers (and the backend's),
                         model, backend, the capture settings, the program description (inputs
                         and output, segments, variants, values, policy — written once, from
                         :meth:`Program.describe <cachec.program.Program.describe>`), checksums
    program.json         eager: the captured denoiser's graph, the exporter's JSON (no pickle)
    program.safetensors  eager: its weights and tensor constants (:mod:`cachec.program_store`)
    onnx/<segment>.onnx  onnxruntime: one ONNX file per segment
    aoti/<variant>.pt2   aotinductor: one package per variant, compiled without its weights
    weights.safetensors  aotinductor: every weight once, by its name in the captured model
    example_inputs.safetensors  the capture's example inputs, when no rule could synthesise them
                         (they came from ``--inputs`` or a pipeline's own first call)
    engines/<seg>.plan   tensorrt: one serialized engine per segment (``.plan.z``: deflated, see
                         ``backends.tensorrt.pack_plan``)
    manifest.sig         optional: HMAC-SHA256 of manifest.json (``cachec compile --sign-key``,
                         :mod:`cachec.signing`)

Each backend writes and checks its own files (:class:`cachec.backends.Backend`); this module
knows none by name.

An eager artifact is loaded by re-running the deterministic passes on its program and checking
that the variants it gets are exactly the manifest's. ONNX and TensorRT artifacts are run from
the manifest's program description and their segment files. None of them needs the model's
Python class or its weight files, and each weight is stored once.
A compile writes into a temporary directory next to the target and renames it into place, so
an interrupted compile leaves nothing behind (:mod:`cachec.output_dir`: what ``--force`` may
replace, and the next compile removes what a SIGKILLed one could not).

Schema 3 (this cachec) holds no pickle anywhere (schema 2 kept the captured program as a
``torch.export`` ``model.pt2``, which ``torch.export.load`` may unpickle without restriction);
an older manifest is refused with a message to recompile.

Trust on load: the manifest's structure is checked field by field (:func:`validate_manifest`),
every listed file against its size and SHA-256, and the versions it records against the installed
ones (:func:`check_versions`), so that a corrupt, truncated, foreign, hand-edited or stale
artifact is reported as one :class:`~cachec.errors.ArtifactError` naming the file and the cause
instead of failing somewhere inside the planner or a backend. Every listed file must lie inside
the artifact directory (no ``..``, no symlink leading out), and ``model.spec`` may name only a
known builtin, so a manifest cannot make cachec read elsewhere.

What the checksums do not do is stop a deliberate edit: whoever can write the folder can
rewrite them too. That is why loading parses data only (JSON, safetensors, ONNX protobuf) and
never unpickles, and why an artifact of native code (AOTInductor libraries, TensorRT engines,
``Backend.native_code``) is loaded only with ``trust_native`` or a valid signature under the
loader's ``verify_key`` (:func:`read_trusted`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from cachec.backends import artifact_backend, artifact_backends, get_backend, major_minor

from . import output_dir, program_store, signing
from . import program as desc
from . import schema as sch
from .capture import EXPORT_LOCK, MAX_BATCH, PROGRAM_FILE, Captured, flatten_exported
from .compatibility import compatible, compiled_method, with_program_data
from .errors import ArtifactError, PolicyError
from .file_modes import follow_umask
from .model_names import portable_config, portable_name
from .models import BUILTINS
from .output_forms import TENSOR
from .planner import compile_program
from .policy import parse_policy
from .program import DescriptionError, Program
from .quantized import inner_tensors, program_quantization
from .version import __version__

FORMAT = "cachec-artifact"
SCHEMA = 3  # 3: no pickle (program.json + safetensors); 2: the program described once; 1: mirrored at the top


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions(backend) -> dict:
    """What the artifact was built with, and what the backend's files need (TensorRT engines only
    load on the TensorRT, flavour and version, that built them)."""
    import diffusers

    return {"cachec": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            **backend.versions()}


def manifest_of(program: Program, captured: Captured, model_spec: str, signature: list[str], backend) -> dict:
    """The manifest, written from one program description; capture settings are the few things
    an eager artifact needs to re-plan that the program does not describe."""
    return {
        "format": FORMAT,
        "schema": SCHEMA,
        "versions": _versions(backend),
        "model": {"spec": portable_name(model_spec), "class": captured.model_class,
                  "config": portable_config(_jsonable(captured.config))},  # no path of this machine
        "signature": signature,
        "capture": {
            "stream_inputs": captured.stream_inputs,
            "latent_input": captured.latent_input,
            "example_batch": captured.example_batch,
            "cross_attention": None if captured.cross_attention is None else sorted(captured.cross_attention),
        },
        "backend": backend.name,
        "program": program.describe(),
        "files": {},
    }


def _jsonable(obj):
    try:
        return json.loads(json.dumps(dict(obj), default=lambda o: list(o) if isinstance(o, tuple) else str(o)))
    except (TypeError, ValueError):
        return {}


def weight_bytes(captured: Captured) -> int:
    """Bytes of the model's parameters and buffers (each tensor counted once): a quantized weight
    counts what it stores (int8: 1 byte an element, plus its scales), not the float it stands for."""
    seen, total = set(), 0
    for t in list(captured.exported.state_dict.values()) + list(captured.exported.constants.values()):
        if isinstance(t, torch.Tensor):
            for x in inner_tensors(t):  # a torchao weight has no storage: its inner tensors do
                if x.data_ptr() not in seen:
                    seen.add(x.data_ptr())
                    total += x.numel() * x.element_size()
    return total


def save(out: str | Path, program: Program, captured: Captured, model_spec: str, signature: list[str],
         force: bool = False, backend: str = "eager", max_batch: int | None = None,
         keep_inputs: bool = False, sign_key: bytes | None = None) -> Path:
    """Write the artifact to ``out`` atomically (temporary directory, then rename).

    ``keep_inputs`` stores the example inputs the model was captured with (``EXAMPLE_INPUTS``):
    when they came from an ``--inputs`` file or a pipeline's own call, nothing else could rebuild
    them for ``cachec run``/``bench`` on the artifact.

    ``max_batch`` caps the batch the artifact accepts (default: the backend's
    ``default_max_batch``, else the exported limit); it is recorded in the manifest and is the
    largest batch of every lowered file (ONNX dynamic axis, TensorRT profile, AOTInductor).
    ``sign_key`` writes ``manifest.sig`` (:mod:`cachec.signing`).
    """
    out = Path(out)
    output_dir.check_replaceable(out, force)
    lowering = get_backend(backend)
    limit = max_batch if max_batch is not None else lowering.default_max_batch
    if limit is not None:
        if limit < 1 or limit > MAX_BATCH:
            raise ArtifactError(f"--max-batch must be 1..{MAX_BATCH}; got {limit}")
        if limit < captured.example_batch:
            raise ArtifactError(f"--max-batch {limit} is below the batch the model was exported at "
                                f"({captured.example_batch}); pass a --max-batch of at least {captured.example_batch}")
        program.model.max_batch = min(program.model.max_batch, limit)
    lowering.check_policy(compiled_method(program))  # e.g. token variants run on some backends only
    lowering.check_weights(program_quantization(program), saving=True)  # quantized weights: before any file is written
    tmp = output_dir.temp_dir(out)  # named by pid and host: a later compile removes it if this one is killed
    try:
        lowered = lowering.save(tmp, program, captured)
        if keep_inputs:
            from safetensors.torch import save_file

            save_file({k: v.detach().cpu().contiguous() for k, v in captured.example_inputs.items()},
                      str(tmp / EXAMPLE_INPUTS))
        manifest = manifest_of(program, captured, model_spec, signature, lowering)
        manifest["lowered"] = lowered
        files = [p for p in sorted(tmp.rglob("*")) if p.is_file()]
        manifest["files"] = {
            str(p.relative_to(tmp)): {"sha256": sha256(p), "bytes": p.stat().st_size} for p in files
        }
        manifest["artifact_bytes"] = sum(f["bytes"] for f in manifest["files"].values())
        manifest["weight_bytes"] = weight_bytes(captured)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        follow_umask(tmp)  # mkdtemp made it private: readable by others as the user's umask says
        if sign_key is not None:
            signing.sign(tmp, sign_key)
        output_dir.move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_manifest(path: str | Path, verify_key: bytes | None = None) -> dict:
    """Read and verify an artifact's manifest: format, schema, structure (:func:`validate_manifest`)
    and every listed file's place, size and checksum. Raises :class:`ArtifactError` naming the file.

    With ``verify_key`` (the key's bytes) the manifest's exact bytes must match ``manifest.sig``
    first (:func:`cachec.signing.verify`), before anything in them is believed.
    """
    path = Path(path)
    mf = path / "manifest.json"
    if not path.is_dir():
        raise ArtifactError(f"{path} is not a directory; an artifact is the directory `cachec compile --out` wrote")
    if not mf.is_file():
        raise ArtifactError(f"{path} has no manifest.json: not a cachec artifact (or an interrupted copy)")
    inside(path, "manifest.json")
    try:
        raw = mf.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"{mf} cannot be read: {exc}") from exc
    if verify_key is not None:
        signing.verify(path, raw, verify_key)
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{mf} is corrupt: not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise ArtifactError(f"{mf} is corrupt: nested too deeply to be a manifest") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{mf} is not a cachec manifest (format field is not {FORMAT!r})")
    if manifest.get("schema") != SCHEMA:
        older = isinstance(manifest.get("schema"), int) and manifest["schema"] < SCHEMA
        raise ArtifactError(
            f"{mf} has manifest schema {manifest.get('schema')!r}; this cachec (version {__version__}) reads "
            f"schema {SCHEMA}: recompile the model with this cachec, or install the cachec that wrote it"
            + (" (older schemas kept the captured program as a torch.export file, which may hold pickled "
               "objects that run code when loaded)" if older else "")
        )
    validate_manifest(manifest, path)
    for name, info in manifest["files"].items():
        f = inside(path, name)
        if not f.is_file():
            raise ArtifactError(f"{f} is missing (listed in the manifest): the artifact is incomplete")
        if f.stat().st_size != info["bytes"] or sha256(f) != info["sha256"]:
            raise ArtifactError(f"{f} does not match its checksum in the manifest: the file is corrupt or truncated")
    return manifest


def inside(path: Path, name: str) -> Path:
    """``path / name``, refused unless it stays inside the artifact directory once symlinks are
    resolved: a manifest (or a planted symlink) must not make cachec read files elsewhere."""
    f = Path(path) / name
    root = os.path.realpath(path)
    real = os.path.realpath(f)
    if os.path.commonpath([root, real]) != root:
        raise ArtifactError(f"{f} leads outside the artifact directory (to {real}); an artifact's files must lie "
                            "inside it: recompile the artifact, or copy it without symlinks")
    return f


def read_trusted(path: str | Path, *, trust_native: bool = False, verify_key=None) -> dict:
    """:func:`read_manifest`, then refuse native code the caller has not vouched for.

    ``verify_key`` (a key file, the key's bytes, or None for ``$CACHEC_VERIFY_KEY``, see
    :mod:`cachec.signing`) makes the signature mandatory. An artifact of a backend whose files
    are machine code (``Backend.native_code``: AOTInductor libraries, TensorRT engines, which no
    parser can vet) loads only with a verified signature or ``trust_native``.
    """
    key = signing.read_key(verify_key) if verify_key is not None else signing.key_from_env()
    manifest = read_manifest(path, key)
    backend = artifact_backend(manifest["backend"])
    if backend.native_code and key is None and not trust_native:
        raise ArtifactError(
            f"{path} is a {backend.name} artifact: its files are native code that runs with your privileges when "
            "loaded, and checksums cannot tell an authentic one from a planted one. Load it only if you trust its "
            "source: pass --trust-native (cachec.load(..., trust_native=True)), or sign it when compiling "
            "(cachec compile --sign-key FILE) and load it with --verify-key FILE (verify_key=...)")
    return manifest


# ---------------------------------------------------------------------------------------------
# manifest structure (checkers from cachec.schema: each takes (value, where) and raises Mismatch)

FILE = sch.record({"sha256": sch.SHA, "bytes": sch.NAT})
EXAMPLE_INPUTS = "example_inputs.safetensors"
SEGMENT_FILES = sch.map_of(sch.NAME)
AOTI_PACKAGE = sch.record({"file": sch.NAME, "inputs": sch.list_of(sch.NAME), "cache_inputs": sch.list_of(sch.NAME),
                           "outputs": sch.list_of(sch.NAME), "cache_outputs": sch.list_of(sch.NAME), "flops": sch.NUM})
AOTI_WEIGHTS = sch.record({"file": sch.NAME, "aliases": sch.map_of(sch.NAME)})


def _manifest_schema():
    return sch.record({
        "format": sch.STR,
        "schema": sch.NAT,
        "versions": sch.record({"cachec": sch.STR, "torch": sch.STR, "diffusers": sch.STR},
                               {"tensorrt": sch.STR, "tensorrt_flavor": sch.STR}),
        "model": sch.record({"spec": sch.STR, "class": sch.NAME, "config": sch.map_of(sch.ANY)}),
        "signature": sch.list_of(sch.NAME),
        "capture": sch.record({"stream_inputs": sch.list_of(sch.NAME), "latent_input": sch.NAME,
                               "example_batch": sch.POS, "cross_attention": sch.nullable(sch.list_of(sch.STR))}),
        "backend": sch.one_of(*artifact_backends()),
        "lowered": sch.record({}, {"onnx_files": SEGMENT_FILES, "engine_files": SEGMENT_FILES,
                                   "aoti_packages": sch.map_of(AOTI_PACKAGE), "aoti_weights": AOTI_WEIGHTS,
                                   "aoti_device": sch.STR}),
        "program": desc.description_schema(("policy", "blocks", "max_batch", "batch_dims")),
        "files": sch.map_of(FILE),
        "artifact_bytes": sch.NAT,
        "weight_bytes": sch.NAT,
    })


def validate_manifest(manifest, path: str | Path) -> None:
    """Check every field an artifact load reads: keys, types and cross-references, once.

    Why total: a manifest is user-editable JSON, and a missing key or a wrong type would
    otherwise surface as a KeyError/TypeError deep inside planning or a backend. Every problem is
    one :class:`ArtifactError` naming ``path/manifest.json`` and the dotted field.
    """
    mf = Path(path) / "manifest.json"

    def fail(where: str, problem: str):
        raise ArtifactError(f"{mf} is malformed: field {where!r} {problem}; recompile the artifact "
                            "(cachec compile) or restore the manifest from the original")

    try:
        _manifest_schema()(manifest, "")
    except sch.Mismatch as bad:
        fail(bad.where, bad.problem())
    prog = manifest["program"]
    try:
        desc.validate_description(prog)
    except DescriptionError as exc:
        fail(f"program.{exc.where}", exc.problem)
    meta, values = prog["meta"], prog["values"]
    try:
        policy = parse_policy(meta["policy"])
    except PolicyError as exc:
        fail("program.meta.policy", f"is not a valid policy ({exc})")
    if policy.needs_data and not meta.get("policy_data"):
        # compile stores the data it resolved; without it a load would read the file the policy names
        fail("program.meta.policy_data", f"is missing: policy {meta['policy']!r} needs data, which an artifact "
             "holds itself (it must not make cachec read a file named in the manifest)")
    bad = policy.check_program(prog["variants"], meta, values)
    if bad is not None:
        fail(f"program.{bad[0]}", bad[1])
    for name in manifest["files"]:
        parts = name.split("/")
        if (not name or name.startswith("/") or "\\" in name or "\0" in name or any(p in ("", ".", "..") for p in parts)
                or name in ("manifest.json", signing.SIGNATURE_FILE)):
            fail(f"files.{name}", "is not a file inside the artifact directory (a relative path without '..')")
    spec = manifest["model"]["spec"]
    if spec.startswith("builtin:") and spec.split(":", 1)[1] not in BUILTINS:
        fail("model.spec", f"names the builtin model {spec.split(':', 1)[1]!r}; builtin models: {', '.join(BUILTINS)}")
    if meta["max_batch"] > MAX_BATCH:
        fail("program.meta.max_batch", f"is {meta['max_batch']}, above the largest batch cachec exports ({MAX_BATCH})")
    cap = manifest["capture"]
    if cap["example_batch"] > meta["max_batch"]:
        fail("capture.example_batch", f"is {cap['example_batch']}, above max_batch {meta['max_batch']}")
    inputs = prog["inputs"]
    if not inputs:
        fail("program.inputs", "should name at least one input")
    if cap["latent_input"] not in inputs:
        fail("capture.latent_input", f"names {cap['latent_input']!r}, which is not one of the inputs {inputs}")
    for i, n in enumerate(cap["stream_inputs"]):
        if n not in inputs:
            fail(f"capture.stream_inputs[{i}]", f"names {n!r}, which is not one of the inputs {inputs}")
    for n, dim in meta["batch_dims"].items():
        if n not in inputs or dim >= len(values[n]["shape"]) or values[n]["shape"][dim] != "B":
            fail(f"program.meta.batch_dims.{n}", "does not point at a batch dimension \"B\" of an input")
    artifact_backend(manifest["backend"]).validate_lowered(manifest, fail)


# ---------------------------------------------------------------------------------------------
# versions


def check_versions(path: str | Path, manifest: dict, allow_version_mismatch: bool = False) -> None:
    """Refuse an artifact the installed packages cannot be trusted to run.

    * written by a newer cachec (major.minor) than the installed one: its meaning may have changed
      even within the same schema;
    * then whatever the backend's files need (:meth:`Backend.check_versions
      <cachec.backends.Backend.check_versions>`: a ``torch.export`` file on the torch that wrote it,
      TensorRT engines on the exact TensorRT that built them).

    ``allow_version_mismatch`` tries anyway where that is the user's call (not for TensorRT).
    """
    path = Path(path)
    versions = manifest["versions"]
    hint = "; pass allow_version_mismatch=True (CLI: --allow-version-mismatch) to try anyway"
    for pkg in ("cachec", "torch"):
        if major_minor(versions[pkg]) is None:
            raise ArtifactError(f"{path / 'manifest.json'} is malformed: field 'versions.{pkg}' is "
                                f"{versions[pkg]!r}, not a version")
    if not allow_version_mismatch and major_minor(versions["cachec"]) > major_minor(__version__):
        raise ArtifactError(
            f"{path} was written by cachec {versions['cachec']}, newer than the installed cachec {__version__}: "
            f"upgrade cachec, or recompile the model with this one{hint}"
        )
    artifact_backend(manifest["backend"]).check_versions(path, manifest, allow_version_mismatch)


def runtime_backend(path: str | Path, manifest: dict, backend: str | None = None) -> tuple[str, dict]:
    """The backend an artifact runs on and the options that point it at the artifact's files.

    An artifact that holds the captured graph (eager) can be lowered by any backend; one that
    holds lowered files only (ONNX Runtime, TensorRT) runs on its own backend.
    """
    own = artifact_backend(manifest["backend"])
    if own.holds_graphs:
        return backend or own.name, {}
    if backend not in (None, own.name):
        raise ArtifactError(
            f"{path} was compiled for the {own.name} backend and holds only its lowered files; run it with "
            f"backend={own.name!r}, or compile the model for {backend!r}"
        )
    return own.name, own.artifact_options(Path(path), manifest["lowered"])


def load_program(path: str | Path, policy=None, *, allow_version_mismatch: bool = False,
                 trust_native: bool = False, verify_key=None) -> tuple[Program, dict]:
    """Load and verify an artifact; returns the rebuilt program and its manifest.

    ``policy`` (a method or a spec) plans another policy on the same captured model (``cachec run``
    uses it for the ``none`` baseline); only the artifact's own policy is checked against the
    manifest. An artifact of lowered files only runs what :func:`cachec.compatibility.compatible` allows.
    ``allow_version_mismatch`` tries an artifact written by a newer cachec or (eager) another
    torch anyway (see :func:`check_versions`); a TensorRT mismatch is always an error.
    ``trust_native``/``verify_key``: see :func:`read_trusted`.
    Every problem with the artifact is an :class:`ArtifactError` naming the file and the cause.
    """
    path = Path(path)
    manifest = read_trusted(path, trust_native=trust_native, verify_key=verify_key)
    check_versions(path, manifest, allow_version_mismatch)
    described = manifest["program"]
    own_policy = described["meta"]["policy"]
    compiled = parse_policy(own_policy)  # validate_manifest parsed it already: it cannot fail here
    requested = parse_policy(policy) if policy else compiled  # a bad spec is the caller's PolicyError
    if not artifact_backend(manifest["backend"]).holds_graphs:
        program = Program.from_description(described, validated=True)  # read_manifest validated it
        program.planned.method = compiled  # parsed once, above: the runtime takes it from here
        try:
            compatible(requested, compiled, len(described["meta"]["blocks"]))
        except PolicyError as exc:
            raise ArtifactError(f"{path} holds only its lowered variants: {exc}") from None
        return program, manifest
    with EXPORT_LOCK:
        ep = program_store.load(path)  # JSON and safetensors only: see cachec.program_store
    inputs = {n: described["values"][n] for n in described["inputs"]}
    exported = _exported_inputs(ep)
    if exported != inputs:
        raise ArtifactError(
            f"{path / 'manifest.json'}: its inputs {json.dumps(inputs)} differ from those of {PROGRAM_FILE} "
            f"{json.dumps(exported)}; the manifest was edited or belongs to another artifact"
        )
    cap, meta = manifest["capture"], described["meta"]
    batch = cap["example_batch"]
    examples = {
        n: torch.zeros([batch if d == "B" else d for d in spec["shape"]], dtype=getattr(torch, spec["dtype"]))
        for n, spec in inputs.items()
    }
    try:
        graph_module = flatten_exported(ep, list(inputs))
    except Exception as exc:  # noqa: BLE001 - a document that deserialises yet does not unlift was edited
        raise ArtifactError(f"{path / PROGRAM_FILE}: the captured program cannot be rebuilt ({type(exc).__name__}: "
                            f"{program_store.one_line(exc, 200)}); the artifact was edited or is corrupt: recompile it") from exc
    captured = Captured(
        graph_module=graph_module,
        input_names=list(inputs),
        output_name=described["output"],
        stream_inputs=cap["stream_inputs"],
        latent_input=cap["latent_input"],
        model_class=manifest["model"]["class"],
        config=manifest["model"]["config"],
        example_inputs=examples,
        batch_dims=meta["batch_dims"],
        cross_attention=None if cap["cross_attention"] is None else set(cap["cross_attention"]),
        max_batch=meta["max_batch"],
        exported=ep,
        output_form=meta.get("output_form", TENSOR),  # re-planned programs hand back the model's output form
    )
    # calibration resolved at compile time: the artifact needs no file (cachec.compatibility)
    chosen = with_program_data(requested, compiled, meta.get("policy_data"))
    try:
        program = compile_program(captured, chosen)
    except PolicyError as exc:
        if policy is not None:
            raise  # the caller's policy does not fit this model: their mistake, not the artifact's
        raise ArtifactError(
            f"{path / 'manifest.json'}: its policy {own_policy!r} cannot be planned on {PROGRAM_FILE} "
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
    if chosen.spec != compiled.spec:  # another policy planned on the graph: the manifest describes its own
        return program, manifest
    got = program.describe()
    if got["variants"] != described["variants"] or sorted(got["segments"]) != sorted(described["segments"]):
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
