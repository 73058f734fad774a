"""Artifacts from shared storage never run code, and never make cachec read outside their folder.

The attacker here can write the artifact's folder: they plant a payload in a file *and* rewrite
that file's checksum in ``manifest.json`` (:func:`_relist`), so the checksums pass. Every payload
writes a marker file when it runs; each case asserts the marker never appears and the load either
fails with one :class:`ArtifactError` or succeeds without running anything.

(a) payloads in every file of an eager artifact: pickles (raw and ``torch.save`` zips), and JSON
    that torch would evaluate (symbolic shapes, guard code, node targets);
(b) native-code artifacts (AOTInductor, TensorRT) need ``trust_native`` or a valid signature;
(c) path escapes: ``model.spec`` with ``..``, symlinks out of the folder, ``../`` file entries;
(d) a bounded fuzz of the files and the manifest, checksums rewritten.

A real AOTInductor artifact, signed and loaded with its key, is in ``tests/e2e/test_aotinductor.py``
(compiling one costs a minute); here native artifacts are the eager one relabelled, which is
enough because the trust gate decides before any native file is opened.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cachec
from cachec import signing
from cachec.artifact import load_program, read_trusted
from cachec.cli import main
from cachec.errors import ArtifactError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def eager_artifact(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("trust") / "fora2"
    assert main(["compile", str(model_dir), "--policy", "fora:2", "--out", str(out)]) == 0
    return out


@pytest.fixture
def marker(tmp_path):
    m = tmp_path / "payload-ran"
    yield m
    assert not m.exists(), "a payload planted in the artifact ran"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def _relist(art: Path, edit=None) -> Path:
    """What an attacker does after planting a file: rewrite the manifest's checksums (and edit it)."""
    mf = art / "manifest.json"
    m = json.loads(mf.read_text())
    if edit is not None:
        edit(m)
    for name in m["files"]:
        f = art / name
        if f.is_file():
            m["files"][name] = {"sha256": hashlib.sha256(f.read_bytes()).hexdigest(), "bytes": f.stat().st_size}
    mf.write_text(json.dumps(m))
    return art


def _code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('ran')"


class _Payload:
    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


def _pickles(marker: Path) -> dict[str, bytes]:
    """Files that run ``_code(marker)`` when unpickled: raw, ``torch.save`` (zip), after a JSON header."""
    raw = pickle.dumps(_Payload(_code(marker)))
    buf = io.BytesIO()
    torch.save({"weight": _Payload(_code(marker))}, buf)
    return {"pickle": raw, "torch.save": buf.getvalue(), "json+pickle": b'{"a": 1}\n' + raw}


def _loads_cleanly_or_refuses(art: Path, **kw) -> str | None:
    """Load through the library; return the ArtifactError message, or None when it loaded."""
    try:
        load_program(art, **kw)
    except ArtifactError as exc:
        return str(exc)
    return None


# ----------------------------------------------------------------------------------------------
# (a) payloads in every file


def test_pickle_payload_in_any_file_never_runs(eager_artifact, tmp_path, marker, capsys):
    files = sorted(json.loads((eager_artifact / "manifest.json").read_text())["files"])
    assert files == ["program.json", "program.safetensors"]  # no .pt2, nothing pickled
    cases = 0
    for name in files:
        for kind, payload in _pickles(marker).items():
            art = _copy(eager_artifact, tmp_path / f"{name}-{kind}")
            (art / name).write_bytes(payload)
            message = _loads_cleanly_or_refuses(_relist(art))
            assert message is not None and name in message, (name, kind, message)
            cases += 1
    # the manifest itself, and every way in: the CLI commands and cachec.load
    art = _copy(eager_artifact, tmp_path / "manifest")
    (art / "manifest.json").write_bytes(_pickles(marker)["pickle"])
    assert "manifest.json is corrupt: not valid JSON" in _loads_cleanly_or_refuses(art)
    art = _copy(eager_artifact, tmp_path / "entry")
    (art / "program.safetensors").write_bytes(_pickles(marker)["torch.save"])
    _relist(art)
    with pytest.raises(ArtifactError):
        cachec.load(art)
    for argv in (["inspect", str(art)], ["run", str(art), "--steps", "2", "--batch", "1"],
                 ["bench", str(art), "--policies", "fora:2", "--steps", "2", "--seeds", "1", "--repeats", "1"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1].startswith("cachec: error: ") and "Traceback" not in err, err
    assert cases == 6


def test_loading_never_unpickles(eager_artifact, monkeypatch):
    """The whole load (manifest, graph, weights, planning, lowering) with every unpickler disabled."""
    def refuse(*a, **kw):
        raise AssertionError("an artifact load unpickled something")

    class RefusingUnpickler(pickle.Unpickler):  # still a class: modules imported later may subclass it
        load = refuse

    monkeypatch.setattr(pickle, "Unpickler", RefusingUnpickler)
    for owner, name in ((pickle, "load"), (pickle, "loads"), (torch, "load"), (torch.serialization, "load"),
                        (torch._C, "_pickle_load_obj")):
        monkeypatch.setattr(owner, name, refuse)
    rt = cachec.load(eager_artifact, num_steps=2)
    assert rt.policy.spec == "fora:2"


def test_a_stray_pickle_next_to_the_files_is_never_read(eager_artifact, tmp_path, marker):
    """A schema-2 ``model.pt2`` (or any unlisted file) in the folder is ignored: only listed files are read."""
    art = _copy(eager_artifact, tmp_path / "art")
    (art / "model.pt2").write_bytes(_pickles(marker)["torch.save"])
    program, _ = load_program(art)
    assert set(program.variants) == {"full", "reuse"}


def _first(doc, key):
    """The first dict in ``doc`` (depth first) that has ``key``."""
    if isinstance(doc, dict):
        if key in doc:
            return doc
        items = doc.values()
    elif isinstance(doc, list):
        items = doc
    else:
        return None
    return next((d for v in items if (d := _first(v, key)) is not None), None)


def _graph_edits(marker: Path):
    code = _code(marker)
    expr = f"__import__('builtins').exec({code!r})"

    def sym_expr(doc):  # sympy.sympify evaluates it: the raw torch deserialiser would run it
        _first(doc, "expr_str")["expr_str"] = expr

    def sym_expr_in_call(doc):
        _first(doc, "expr_str")["expr_str"] = f"Symbol('s0') + Integer({expr})"

    def sym_expr_attribute(doc):
        _first(doc, "expr_str")["expr_str"] = "Symbol('s0').__class__"

    def guards(doc):  # exec-ed by ExportedProgram.module()
        doc["guards_code"] = [f"{expr} is None"]

    def target(name):
        def edit(doc):
            doc["graph_module"]["graph"]["nodes"][0]["target"] = name
        return edit

    def bounds(doc):
        next(iter(doc["range_constraints"].values()))["min_val"] = expr

    def stack_trace(doc):  # lands in generated code as a comment: must stay one
        for node in doc["graph_module"]["graph"]["nodes"][:5]:
            node.setdefault("metadata", {})["stack_trace"] = f'File "x.py", line 1, in f\n    y = 1\n{code}\n'

    return {
        "sympy expression": (sym_expr, "symbolic expression"),
        "sympy expression inside a constructor": (sym_expr_in_call, "symbolic expression"),
        "attribute in an expression": (sym_expr_attribute, "symbolic expression"),
        "guard code": (guards, "guards_code"),
        "target builtins.exec": (target("builtins.exec"), "node target"),
        "target torch.load": (target("torch.load"), "node target"),
        "target torch.ops.load_library": (target("torch.ops.load_library"), "node target"),
        "target aten.from_file": (target("torch.ops.aten.from_file.default"), "node target"),
        "target of another namespace": (target("torch.ops.mylib.run.default"), "node target"),
        "target triton wrapper": (target("torch.ops.higher_order.triton_kernel_wrapper_functional"), "node target"),
        "range bound": (bounds, "range_constraints"),
        "stack trace": (stack_trace, None),  # None: may load, must not run
    }


@pytest.mark.parametrize("case", list(_graph_edits(Path("m"))))
def test_graph_document_that_torch_would_execute_is_refused(case, eager_artifact, tmp_path, marker):
    edit, fragment = _graph_edits(marker)[case]
    art = _copy(eager_artifact, tmp_path / "art")
    doc = json.loads((art / "program.json").read_text())
    edit(doc)
    (art / "program.json").write_text(json.dumps(doc))
    message = _loads_cleanly_or_refuses(_relist(art))
    if fragment is not None:
        assert message is not None and fragment in message and "program.json" in message, message


def test_safetensors_metadata_and_names_are_data_only(eager_artifact, tmp_path, marker):
    from safetensors.torch import load_file, save_file

    art = _copy(eager_artifact, tmp_path / "art")
    tensors = load_file(str(art / "program.safetensors"))
    save_file(tensors, str(art / "program.safetensors"), metadata={"cachec": _code(marker)})
    assert "metadata" in _loads_cleanly_or_refuses(_relist(art))
    save_file({"elsewhere/x": torch.zeros(1)}, str(art / "program.safetensors"),
              metadata={"cachec": json.dumps({"params": {}, "aliases": {}, "devices": {}})})
    assert "is not a tensor of the program" in _loads_cleanly_or_refuses(_relist(art))


def test_older_schemas_are_refused_with_a_reason(eager_artifact, tmp_path):
    art = _copy(eager_artifact, tmp_path / "art")
    m = json.loads((art / "manifest.json").read_text())
    m["schema"] = 2
    (art / "manifest.json").write_text(json.dumps(m))
    message = _loads_cleanly_or_refuses(art)
    assert "reads schema 3: recompile" in message and "pickled" in message


# ----------------------------------------------------------------------------------------------
# (b) native code: opt in, or a signature under the loader's key


def _native(eager_artifact: Path, dst: Path, backend: str = "aotinductor") -> Path:
    """The eager artifact relabelled as a native one (consistent manifest; the gate runs first)."""
    def relabel(m):
        m["backend"] = backend
        variants = list(m["program"]["variants"])
        if backend == "aotinductor":
            m["lowered"] = {"aoti_packages": {v: {"file": "program.json", "inputs": [], "cache_inputs": [],
                                                  "outputs": [], "cache_outputs": [], "flops": 0.0}
                                              for v in variants},
                            "aoti_weights": {"file": "program.safetensors", "aliases": {}}, "aoti_device": "cpu"}
        else:
            m["lowered"] = {"engine_files": {s: "program.json" for s in m["program"]["segments"]}}
            m["versions"].update(tensorrt="10.0.0", tensorrt_flavor="tensorrt")  # not reached: the gate is first

    return _relist(_copy(eager_artifact, dst), relabel)


@pytest.mark.parametrize("backend", ["aotinductor", "tensorrt"])
def test_unsigned_native_artifact_is_refused_without_opt_in(backend, eager_artifact, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(signing.KEY_ENV, raising=False)
    art = _native(eager_artifact, tmp_path / "art", backend)
    for call in (lambda: read_trusted(art), lambda: load_program(art), lambda: cachec.load(art)):
        with pytest.raises(ArtifactError) as info:
            call()
        message = str(info.value)
        assert "native code" in message and "--trust-native" in message and "--sign-key" in message, message
    assert main(["inspect", str(art)]) == 2
    err = capsys.readouterr().err
    assert "--trust-native" in err and "Traceback" not in err
    assert read_trusted(art, trust_native=True)["backend"] == backend


def _sign(art: Path, key: bytes) -> Path:
    signing.sign(art, key)
    return art


def test_signed_native_artifact_loads_with_its_key_only(eager_artifact, tmp_path, monkeypatch):
    monkeypatch.delenv(signing.KEY_ENV, raising=False)
    key, other = b"k" * 32, b"o" * 32
    (tmp_path / "key").write_bytes(key + b"\n")
    art = _sign(_native(eager_artifact, tmp_path / "art"), key)
    program, _ = load_program(art, verify_key=key)  # bytes, or a key file, or $CACHEC_VERIFY_KEY
    assert set(program.variants) == {"full", "reuse"}
    assert load_program(art, verify_key=tmp_path / "key")[1]["backend"] == "aotinductor"
    monkeypatch.setenv(signing.KEY_ENV, str(tmp_path / "key"))
    assert read_trusted(art)["backend"] == "aotinductor"
    monkeypatch.delenv(signing.KEY_ENV)
    with pytest.raises(ArtifactError, match="does not match the manifest under the given key"):
        read_trusted(art, verify_key=other)
    with pytest.raises(ArtifactError, match="--trust-native"):  # a signature is not trusted without a key
        read_trusted(art)


def _edits_after_signing():
    def manifest_field(a):
        m = json.loads((a / "manifest.json").read_text())
        m["program"]["meta"]["max_batch"] = 7
        (a / "manifest.json").write_text(json.dumps(m, indent=1))

    def manifest_whitespace(a):
        (a / "manifest.json").write_bytes((a / "manifest.json").read_bytes() + b" ")

    def file_relisted(a):  # a file edited and its checksum rewritten: the manifest changes, the MAC fails
        with open(a / "program.safetensors", "r+b") as f:
            f.seek(-4, 2)
            f.write(b"\x00\x01\x02\x03")
        _relist(a)

    def file_only(a):  # a file edited, manifest untouched: the checksum catches it
        with open(a / "program.json", "ab") as f:
            f.write(b" ")

    def signature_removed(a):
        (a / signing.SIGNATURE_FILE).unlink()

    def signature_forged(a):
        (a / signing.SIGNATURE_FILE).write_text(signing.signature((a / "manifest.json").read_bytes(), b"x" * 32))

    return {"manifest field": (manifest_field, "does not match the manifest under the given key"),
            "manifest whitespace": (manifest_whitespace, "does not match the manifest under the given key"),
            "file and checksum": (file_relisted, "does not match the manifest under the given key"),
            "file only": (file_only, "does not match its checksum"),
            "signature removed": (signature_removed, "is not signed"),
            "signature under another key": (signature_forged, "does not match the manifest under the given key")}


@pytest.mark.parametrize("case", list(_edits_after_signing()))
def test_any_edit_after_signing_is_refused(case, eager_artifact, tmp_path, monkeypatch):
    monkeypatch.delenv(signing.KEY_ENV, raising=False)
    edit, fragment = _edits_after_signing()[case]
    key = b"k" * 32
    art = _sign(_native(eager_artifact, tmp_path / "art"), key)
    read_trusted(art, verify_key=key)
    edit(art)
    with pytest.raises(ArtifactError, match=fragment):
        read_trusted(art, verify_key=key)


def test_keys_and_cli_signing(eager_artifact, model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(signing.KEY_ENV, raising=False)
    with pytest.raises(ArtifactError, match="use at least 16 random bytes"):
        signing.read_key(b"short")
    with pytest.raises(ArtifactError, match="cannot read the key file"):
        signing.read_key(tmp_path / "nosuch")
    assert main(["compile", str(model_dir), "--out", str(tmp_path / "x"), "--sign-key", str(tmp_path / "nosuch")]) == 2
    assert "--sign-key" in capsys.readouterr().err and not (tmp_path / "x").exists()  # refused before the export
    # an eager artifact loads unsigned; a verify key makes the signature mandatory for it too
    (tmp_path / "key").write_text("k" * 32)
    assert main(["inspect", str(eager_artifact), "--verify-key", str(tmp_path / "key")]) == 2
    assert "is not signed" in capsys.readouterr().err
    art = _sign(_copy(eager_artifact, tmp_path / "signed"), b"k" * 32)
    assert main(["inspect", str(art), "--verify-key", str(tmp_path / "key"), "--json"]) == 0


# ----------------------------------------------------------------------------------------------
# (c) paths stay inside the artifact


def test_model_spec_cannot_climb_out(eager_artifact, tmp_path, capsys):
    for spec in ("builtin:../../..", "builtin:../../../etc", "builtin:tiny-dit/../../x"):
        art = _relist(_copy(eager_artifact, tmp_path / spec.replace("/", "_")),
                      lambda m, s=spec: m["model"].update(spec=s))
        message = _loads_cleanly_or_refuses(art)
        assert message is not None and "field 'model.spec' names the builtin model" in message, message
        assert main(["run", str(art), "--steps", "2", "--batch", "1"]) == 2
        assert "model.spec" in capsys.readouterr().err


def test_symlinks_out_of_the_artifact_are_refused(eager_artifact, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(eager_artifact / "program.safetensors", outside / "w")
    art = _copy(eager_artifact, tmp_path / "file-link")
    (art / "program.safetensors").unlink()
    (art / "program.safetensors").symlink_to(outside / "w")  # same bytes: the checksum alone would pass
    assert "leads outside the artifact directory" in _loads_cleanly_or_refuses(art)
    art = _copy(eager_artifact, tmp_path / "manifest-link")
    shutil.move(art / "manifest.json", outside / "manifest.json")
    (art / "manifest.json").symlink_to(outside / "manifest.json")
    assert "leads outside the artifact directory" in _loads_cleanly_or_refuses(art)
    art = _relist(_copy(eager_artifact, tmp_path / "dir-link"),
                  lambda m: m["files"].update({"sub/w": m["files"]["program.safetensors"]}))
    (art / "sub").symlink_to(outside)
    assert "leads outside the artifact directory" in _loads_cleanly_or_refuses(_relist(art))
    art = _copy(eager_artifact, tmp_path / "inner-link")  # a link that stays inside is fine
    (art / "program.safetensors").rename(art / "real.safetensors")
    (art / "program.safetensors").symlink_to("real.safetensors")
    assert _loads_cleanly_or_refuses(art) is None


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../x", "./program.json", "a//b", "a\\..\\x",
                                  "manifest.sig"])
def test_file_entries_outside_the_artifact_are_refused(name, eager_artifact, tmp_path):
    art = _relist(_copy(eager_artifact, tmp_path / "art"),
                  lambda m: m["files"].update({name: {"sha256": "0" * 64, "bytes": 1}}))
    message = _loads_cleanly_or_refuses(art)
    assert message is not None and "is not a file inside the artifact directory" in message, message


def test_policy_data_must_travel_with_the_artifact(eager_artifact, tmp_path):
    """A policy that reads a file (calib=, ratios=) is resolved at compile time; a manifest that drops
    the resolved data would make the load read whatever file the policy names."""
    def magcache(m):
        m["program"]["meta"]["policy"] = "magcache:ratios=/etc/passwd"
        m["program"]["meta"].pop("policy_data", None)

    message = _loads_cleanly_or_refuses(_relist(_copy(eager_artifact, tmp_path / "art"), magcache))
    assert message is not None and "policy_data' is missing" in message, message


# ----------------------------------------------------------------------------------------------
# (d) fuzz: mutated files and manifests, checksums rewritten


def _mutations():
    file_op = st.sampled_from(["truncate", "flip", "append", "empty"])
    json_op = st.sampled_from(["delete", "type", "string", "huge"])
    return st.one_of(
        st.tuples(st.just("file"), st.sampled_from(["program.json", "program.safetensors"]), file_op,
                  st.integers(0, 1 << 30), st.binary(min_size=1, max_size=8)),
        st.tuples(st.sampled_from(["manifest.json", "program.json"]), st.integers(0, 1 << 30), json_op,
                  st.integers(0, 1 << 30), st.binary(min_size=1, max_size=8)),
    )


def _mutate_json(doc, a: int, op: str, data: bytes, marker: Path) -> tuple:
    """Replace (or delete) the ``a``-th value of ``doc``, depth first, by a hostile one; its path."""
    paths = []
    stack = [(doc, ())]
    while stack:
        node, path = stack.pop()
        paths.append(path)
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        stack.extend((v, (*path, k)) for k, v in children)
    path = paths[1:][a % (len(paths) - 1)]
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if op == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = {"type": [data.hex()], "string": f"__import__('builtins').exec({_code(marker)!r})",
                            "huge": 10 ** 400}[op]
    return path


def _mutate(art: Path, mutation, marker: Path) -> None:
    kind, a, op, pos, data = mutation
    if kind == "file":
        f = art / a
        raw = bytearray(f.read_bytes())
        at = pos % max(len(raw), 1)
        if op == "truncate":
            raw = raw[:at]
        elif op == "flip":
            raw[at:at + len(data)] = bytes(b ^ d for b, d in zip(raw[at:at + len(data)], data, strict=False))
        elif op == "append":
            raw += data
        else:
            raw = bytearray()
        f.write_bytes(bytes(raw))
        _relist(art)
        return
    doc = json.loads((art / kind).read_text())
    path = _mutate_json(doc, a, op, data, marker)
    (art / kind).write_text(json.dumps(doc))
    if kind == "program.json" or path[0] != "files":  # an edited checksum entry stays as edited
        _relist(art)


@pytest.mark.slow  # ~15 s: a mutation that passes the checks loads and re-plans the program
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(mutation=_mutations())
def test_fuzzed_artifacts_fail_with_one_artifact_error(eager_artifact, tmp_path_factory, mutation):
    root = tmp_path_factory.mktemp("fuzz")
    marker = root / "payload-ran"
    art = _copy(eager_artifact, root / "art")
    _mutate(art, mutation, marker)
    try:
        load_program(art)
    except ArtifactError as exc:
        message = str(exc)
        assert "\n" not in message and "Traceback" not in message, message  # one line
        assert str(art) in message, message  # it names the artifact or its file
    assert not marker.exists()


def test_serve_refuses_native_code_before_any_replica_starts(eager_artifact, tmp_path, monkeypatch, capsys):
    pytest.importorskip("ray.serve")
    from cachec import serve as cserve
    from cachec.serve_worker import ArtifactWorker

    monkeypatch.delenv(signing.KEY_ENV, raising=False)
    art = _native(eager_artifact, tmp_path / "art")
    with pytest.raises(ArtifactError, match="--trust-native"):
        cserve.build_app(str(art))
    with pytest.raises(ArtifactError, match="--trust-native"):
        ArtifactWorker(art, device="cpu")
    assert main(["serve", str(art)]) == 2
    assert "--trust-native" in capsys.readouterr().err
    (tmp_path / "key").write_text("k" * 32)
    _sign(art, b"k" * 32)
    assert cserve.build_app(str(art), verify_key=str(tmp_path / "key")) is not None  # the replicas get the key file
    with pytest.raises(ArtifactError, match="is not signed"):
        cserve.build_app(str(eager_artifact), verify_key=str(tmp_path / "key"))


def test_onnx_segment_files_hold_no_code_and_no_outside_data(tmp_path, marker):
    """What the ONNX Runtime backend opens from an artifact: a pickle is not a model; a model whose
    tensors live in another file (``../../secret``) is refused before onnxruntime reads it."""
    pytest.importorskip("onnxruntime")
    import types

    import onnx
    from onnx import TensorProto, helper

    from cachec.backends.onnxruntime import sessions_for

    (tmp_path / "secret").write_bytes(b"\0" * 16)
    art = tmp_path / "art"
    (art / "onnx").mkdir(parents=True)
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4], [0.0] * 4)
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [weight])
    model = helper.make_model(graph)
    program = types.SimpleNamespace()
    files = {"seg": "onnx/seg.onnx"}
    onnx.save(model, str(art / "onnx" / "seg.onnx"))
    assert set(sessions_for(program, art, ["CPUExecutionProvider"], files)) == {"seg"}  # the plain model loads
    stored = model.graph.initializer[0]
    stored.data_location = TensorProto.EXTERNAL
    del stored.float_data[:]
    stored.external_data.add(key="location", value="../../secret")
    stored.external_data.add(key="length", value="16")
    onnx.save(model, str(art / "onnx" / "seg.onnx"))
    with pytest.raises(ArtifactError, match="refers to tensor data in other files"):
        sessions_for(program, art, ["CPUExecutionProvider"], files)
    for payload in _pickles(marker).values():
        (art / "onnx" / "seg.onnx").write_bytes(payload)
        with pytest.raises(ArtifactError, match="seg.onnx"):
            sessions_for(program, art, ["CPUExecutionProvider"], files)
