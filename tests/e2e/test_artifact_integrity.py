"""Artifacts that can be trusted: every bad artifact is one ArtifactError naming the file and the cause.

Each case is checked twice, as a library user meets it (``cachec.artifact.load_program``) and as a
CLI user does (``cachec inspect DIR``: exit code 2, one ``cachec: error:`` line, no traceback). The
fuzz tests start from real artifacts and mutate their manifests: loading either succeeds or
raises ArtifactError, never another exception. Interrupted compiles leave nothing behind.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cachec
from cachec import artifact
from cachec.artifact import load_program
from cachec.cli import main
from cachec.errors import ArtifactError, BackendError


def _has_tensorrt() -> bool:
    try:
        from cachec.backends.tensorrt import trt

        trt()
        import onnxscript  # noqa: F401
    except (ImportError, BackendError):
        return False
    return True


# The lowered artifact: TensorRT when its bindings are installed (engines build on CPU), so the
# TensorRT version checks run; else ONNX Runtime (same manifest code path: description + files).
LOWERED = "tensorrt" if _has_tensorrt() else "onnxruntime"
SEG_DIR = {"tensorrt": "engines", "onnxruntime": "onnx"}[LOWERED]
SEG_KEY = {"tensorrt": "engine_files", "onnxruntime": "onnx_files"}[LOWERED]


@pytest.fixture(scope="module")
def eager_artifact(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eager") / "fora2"
    assert main(["compile", str(model_dir), "--policy", "fora:2", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def lowered_artifact(model_dir, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    root = tmp_path_factory.mktemp("lowered")
    out = root / LOWERED
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CACHEC_TRT_CACHE", str(root / "trt-cache"))
        assert main(["compile", str(model_dir), "--policy", "fora:2", "--backend", LOWERED, "--out", str(out)]) == 0
    return out


def _copy(src: Path, tmp_path: Path, name: str = "art") -> Path:
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def _edit(art: Path, fn) -> Path:
    mf = art / "manifest.json"
    m = json.loads(mf.read_text())
    fn(m)
    mf.write_text(json.dumps(m))
    return art


def _rejected(art: Path, fragment: str, capsys, names_file: str | None = None, cli_policy: str = "fora:2",
              **load_kw) -> str:
    """Both ways in fail with ``fragment``: load_program raises ArtifactError, the CLI exits 2."""
    with pytest.raises(ArtifactError) as info:
        load_program(art, trust_native=True, **load_kw)  # integrity, not trust (tests/hostile): TensorRT admitted
    message = str(info.value)
    assert fragment in message, message
    assert str(art / names_file if names_file else art) in message, message  # the file is named
    if not load_kw:
        assert main(["inspect", str(art), "--policy", cli_policy, "--trust-native"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("cachec: error: ") and fragment in err, err
        assert "Traceback" not in err
    return message


# ----------------------------------------------------------------------------------------------
# files: corrupt, truncated, missing, foreign


def test_corrupt_and_truncated_program_files(eager_artifact, tmp_path, capsys):
    art = _copy(eager_artifact, tmp_path)
    with open(art / "program.json", "r+b") as f:
        f.seek(200)
        f.write(b"\xff\x00\xff")
    _rejected(art, "program.json does not match its checksum in the manifest: the file is corrupt or truncated",
              capsys, "program.json")
    os.truncate(art / "program.json", 50)
    _rejected(art, "does not match its checksum", capsys, "program.json")
    (art / "program.json").unlink()
    _rejected(art, "program.json is missing (listed in the manifest): the artifact is incomplete", capsys, "program.json")


def test_program_file_not_listed_is_caught(eager_artifact, tmp_path, capsys):
    art = _edit(_copy(eager_artifact, tmp_path), lambda m: m["files"].pop("program.json"))
    _rejected(art, "field 'files' does not list program.json", capsys, "manifest.json")


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"{not json", "manifest.json is corrupt: not valid JSON"),
        (b"", "manifest.json is corrupt: not valid JSON"),
        (b"\xff\xfe\x00garbage", "manifest.json is corrupt: not valid JSON"),
        (b"[" * 100000, "manifest.json is corrupt"),
        (b"[1, 2, 3]", "is not a cachec manifest (format field is not 'cachec-artifact')"),
        (json.dumps({"format": "onnx-model", "schema": 2}).encode(), "is not a cachec manifest"),
        (json.dumps({"format": "cachec-artifact", "schema": 4}).encode(),
         "has manifest schema 4; this cachec (version 0.1.0) reads schema 3"),
        (json.dumps({"format": "cachec-artifact", "schema": 1}).encode(),
         "has manifest schema 1; this cachec (version 0.1.0) reads schema 3: recompile the model with this cachec"),
        (json.dumps({"format": "cachec-artifact", "schema": 2}).encode(),
         "has manifest schema 2; this cachec (version 0.1.0) reads schema 3: recompile the model with this cachec"),
        (json.dumps({"format": "cachec-artifact", "schema": "3"}).encode(), "has manifest schema '3'"),
        (json.dumps({"format": "cachec-artifact", "schema": 3}).encode(), "field 'versions' is missing"),
    ],
)
def test_corrupt_or_foreign_manifest(content, fragment, eager_artifact, tmp_path, capsys):
    art = _copy(eager_artifact, tmp_path)
    (art / "manifest.json").write_bytes(content)
    _rejected(art, fragment, capsys, "manifest.json")


def test_not_an_artifact(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match="is not a directory"):
        load_program(tmp_path / "file")
    with pytest.raises(ArtifactError, match="has no manifest.json: not a cachec artifact"):
        load_program(tmp_path)


# ----------------------------------------------------------------------------------------------
# manifest structure: every malformed field is named


def _set(keys, value):
    def fn(m):
        d = m
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return fn


def _del(keys):
    def fn(m):
        d = m
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]
    return fn


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (_del(["program", "variants"]), "field 'program.variants' is missing"),
        (_del(["program", "values", "hidden_states", "dtype"]), "field 'program.values.hidden_states.dtype' is missing"),
        (_set(["program", "segments", "b0_ff", "inputs"], 3),
         "field 'program.segments.b0_ff.inputs' should be a list, got an integer 3"),
        (_set(["program", "values", "timestep", "dtype"], "float99"),
         "field 'program.values.timestep.dtype' should be a torch dtype name such as 'float32', got a string \"float99\""),
        (_set(["program", "values", "hidden_states", "shape", 1], -4),
         "field 'program.values.hidden_states.shape[1]' should be \"B\" (the batch) or a non-negative integer"),
        (_set(["program", "variants", "full", 0], ["jump", "b0_ff"]), "field 'program.variants.full[0]' should be an op"),
        (_set(["program", "meta", "max_batch"], True),
         "field 'program.meta.max_batch' should be a positive integer, got a boolean true"),
        (_set(["program", "meta", "max_batch"], 10**12),
         "field 'program.meta.max_batch' is 1000000000000, above the largest batch"),
        (_set(["capture", "example_batch"], 2000), "field 'capture.example_batch' is 2000, above max_batch 1024"),
        (_set(["program", "meta", "policy"], "fora:0"),
         "field 'program.meta.policy' is not a valid policy (fora: N=0 is out of range"),
        (_set(["backend"], "tpu"), "field 'backend' should be one of 'eager', 'onnxruntime', 'tensorrt'"),
        (_set(["capture", "latent_input"], "noise"),
         "field 'capture.latent_input' names 'noise', which is not one of the inputs"),
        (_set(["program", "meta", "batch_dims", "timestep"], 3),
         "field 'program.meta.batch_dims.timestep' does not point at a batch dimension"),
        (_set(["files", "../outside.bin"], {"sha256": "0" * 64, "bytes": 1}),
         "field 'files.../outside.bin' is not a file inside the artifact directory"),
        (_set(["files", "program.json", "sha256"], "abc"), "field 'files.program.json.sha256' should be a SHA-256 hex digest"),
        (_set(["versions", "torch"], "banana"), "field 'versions.torch' is 'banana', not a version"),
        (_del(["program", "values"]), "field 'program.values' is missing"),
        (_set(["program", "variants", "full", 0], ["run", "nosuch"]),
         "field 'program.variants.full[0]' runs segment 'nosuch', which is not among the segments"),
        (_set(["program", "meta", "policy"], "nosuch"), "field 'program.meta.policy' is not a valid policy"),
    ],
)
def test_malformed_manifest_fields_are_named(mutate, fragment, eager_artifact, tmp_path, capsys):
    art = _edit(_copy(eager_artifact, tmp_path), mutate)
    message = _rejected(art, fragment, capsys, "manifest.json")
    assert "is malformed" in message


def test_manifest_records_the_program_once(eager_artifact):
    """Schema 2 on: the program (policy, segments, variants, values, batch settings) is described once,
    under ``program``; the schema-1 top-level copies, which could disagree with it, are gone."""
    manifest = json.loads((eager_artifact / "manifest.json").read_text())
    mirrored = {"policy", "segments", "variants", "caches", "inputs", "output", "blocks", "signal", "batch_dims",
                "max_batch", "none_flops_per_sample"}
    assert not mirrored & set(manifest)
    assert {"policy", "blocks", "batch_dims", "max_batch"} <= set(manifest["program"]["meta"])


def test_settings_the_planner_cannot_use_are_named(eager_artifact, tmp_path, capsys):
    art = _edit(_copy(eager_artifact, tmp_path), _set(["capture", "stream_inputs"], []))
    _rejected(art, "the program cannot be rebuilt from program.json with the manifest's settings (", capsys,
              "manifest.json")

    def delta(m):
        m["program"]["meta"]["policy"] = "delta:2"  # needs blocks=a-b on a 2-block model

    art = _edit(_copy(eager_artifact, tmp_path, "b"), delta)
    _rejected(art, "its policy 'delta:2' cannot be planned on program.json (delta needs blocks=a-b", capsys,
              "manifest.json", cli_policy="delta:2")
    with pytest.raises(cachec.PolicyError, match="delta needs blocks=a-b"):  # the caller's own policy: theirs
        load_program(eager_artifact, "delta:2")


def test_manifest_that_disagrees_with_the_program_file(eager_artifact, tmp_path, capsys):
    art = _edit(_copy(eager_artifact, tmp_path), _set(["program", "values", "hidden_states", "shape"], ["B", 4, 16, 16]))
    _rejected(art, "differ from those of program.json", capsys, "manifest.json")
    def reverse(m):
        m["program"]["variants"]["reuse"].reverse()

    art = _edit(_copy(eager_artifact, tmp_path, "b"), reverse)
    _rejected(art, "the program rebuilt from program.json differs from the manifest's variants", capsys)


# ----------------------------------------------------------------------------------------------
# versions


def test_newer_cachec_is_refused_unless_allowed(eager_artifact, tmp_path, capsys):
    art = _edit(_copy(eager_artifact, tmp_path), _set(["versions", "cachec"], "0.2.0"))
    _rejected(art, f"was written by cachec 0.2.0, newer than the installed cachec {cachec.__version__}", capsys)
    program, _ = load_program(art, allow_version_mismatch=True)
    assert set(program.variants) == {"full", "reuse"}
    _edit(art, _set(["versions", "cachec"], "0.1.9"))  # a newer patch release writes the same artifacts
    load_program(art)


def test_eager_artifact_from_another_torch_is_refused_unless_allowed(eager_artifact, tmp_path, capsys):
    art = _edit(_copy(eager_artifact, tmp_path), _set(["versions", "torch"], "2.5.1+cu121"))
    message = _rejected(art, f"was exported with torch 2.5.1+cu121 but torch {torch.__version__} is installed",
                        capsys, "program.json")
    assert "--allow-version-mismatch" in message
    program, _ = load_program(art, allow_version_mismatch=True)
    assert set(program.variants) == {"full", "reuse"}
    # the opt-out as users reach it: cachec.load and the CLI flag
    assert cachec.load(art, allow_version_mismatch=True).policy.spec == "fora:2"
    assert main(["inspect", str(art), "--allow-version-mismatch"]) == 0
    major, minor = torch.__version__.split(".")[:2]
    _edit(art, _set(["versions", "torch"], f"{major}.{minor}.99"))  # same major.minor: accepted
    load_program(art)


@pytest.mark.slow  # lowers to ONNX
def test_lowered_artifact_does_not_depend_on_torch_version(lowered_artifact, tmp_path):
    art = _edit(_copy(lowered_artifact, tmp_path), _set(["versions", "torch"], "1.13.0"))
    program, manifest = load_program(art, trust_native=True)
    assert manifest["backend"] == LOWERED and set(program.variants) == {"full", "reuse"}


@pytest.mark.skipif(LOWERED != "tensorrt", reason="TensorRT bindings not installed")
def test_tensorrt_version_must_match_exactly(lowered_artifact, tmp_path, capsys):
    manifest = json.loads((lowered_artifact / "manifest.json").read_text())
    from cachec.backends.tensorrt import trt

    assert manifest["versions"]["tensorrt"] == trt().__version__  # recorded at compile
    flavor = manifest["versions"]["tensorrt_flavor"]
    art = _edit(_copy(lowered_artifact, tmp_path), _set(["versions", "tensorrt"], "10.0.0"))
    fragment = f"the engines were built with {flavor} 10.0.0 but {flavor} {trt().__version__} is installed"
    _rejected(art, fragment, capsys, "engines")
    with pytest.raises(ArtifactError, match="engines load only on the version that built them"):
        load_program(art, allow_version_mismatch=True, trust_native=True)  # no opt-out: engines cannot deserialize
    other = "tensorrt" if flavor == "tensorrt-rtx" else "tensorrt-rtx"
    art = _edit(_copy(lowered_artifact, tmp_path, "b"), _set(["versions", "tensorrt_flavor"], other))
    _rejected(art, f"built with {other} {trt().__version__} but {flavor}", capsys, "engines")
    art = _edit(_copy(lowered_artifact, tmp_path, "c"), _del(["versions", "tensorrt"]))
    _rejected(art, "field 'versions.tensorrt' is missing (TensorRT engines load only on the version that built them)",
              capsys, "manifest.json")


# ----------------------------------------------------------------------------------------------
# lowered artifacts: segment files and the program description


@pytest.mark.slow  # lowers to ONNX
def test_missing_or_corrupt_segment_file(lowered_artifact, tmp_path, capsys):
    manifest = json.loads((lowered_artifact / "manifest.json").read_text())
    seg, rel = next(iter(manifest["lowered"][SEG_KEY].items()))
    assert rel.startswith(SEG_DIR + "/")
    art = _copy(lowered_artifact, tmp_path)
    (art / rel).unlink()
    _rejected(art, f"{rel} is missing (listed in the manifest)", capsys, rel)
    art = _copy(lowered_artifact, tmp_path, "b")
    (art / rel).write_bytes((art / rel).read_bytes()[:-7])
    _rejected(art, f"{rel} does not match its checksum", capsys, rel)
    # a segment file the program uses but the checksummed list omits
    art = _edit(_copy(lowered_artifact, tmp_path, "c"), lambda m: m["files"].pop(rel))
    _rejected(art, f"field 'lowered.{SEG_KEY}.{seg}' names {rel}, which is not among the checksummed files",
              capsys, "manifest.json")
    art = _edit(_copy(lowered_artifact, tmp_path, "d"), lambda m: m["lowered"][SEG_KEY].pop(seg))
    _rejected(art, f"field 'lowered.{SEG_KEY}' has no file for segment {seg!r}", capsys, "manifest.json")
    art = _edit(_copy(lowered_artifact, tmp_path, "e"), lambda m: m["lowered"].pop(SEG_KEY))
    _rejected(art, f"field 'lowered.{SEG_KEY}' is missing", capsys, "manifest.json")


@pytest.mark.slow  # lowers to ONNX
@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (_del(["program", "segments"]), "field 'program.segments' is missing"),
        (_set(["program", "values", "hidden_states", "dtype"], "complex999"),
         "field 'program.values.hidden_states.dtype' should be a torch dtype name"),
        (_set(["program", "output"], "nothing"), "field 'program.output' names 'nothing', which has no entry in values"),
        (_set(["program", "variants", "reuse", 1], ["load", "not_a_cache", "div_1"]),
         "field 'program.variants.reuse[1]' uses cache 'not_a_cache', which is not a cache value in values"),
        (_del(["program", "variants", "reuse"]),
         "field 'program.variants' has no 'reuse' variant, which policy fora:2 runs"),
        (_set(["program", "segments", "b0_ff", "outputs", 0], "ghost"),
         "field 'program.segments.b0_ff.outputs[0]' names 'ghost', which has no entry in values"),
    ],
)
def test_malformed_program_description_is_named(mutate, fragment, lowered_artifact, tmp_path, capsys):
    art = _edit(_copy(lowered_artifact, tmp_path), mutate)
    _rejected(art, fragment, capsys, "manifest.json")


def test_from_description_raises_artifact_error():
    from cachec.program import DescriptionError, Program

    with pytest.raises(DescriptionError, match="field 'segments' is missing") as info:
        Program.from_description({"inputs": [], "output": "x", "variants": {}, "values": {}, "meta": {}})
    assert isinstance(info.value, ArtifactError)
    with pytest.raises(ArtifactError, match="should be an object"):
        Program.from_description(["not", "a", "description"])


# ----------------------------------------------------------------------------------------------
# an interrupted compile leaves nothing behind


def _compile(model_dir, out, *extra):
    return main(["compile", str(model_dir), "--policy", "fora:2", "--out", str(out), *extra])


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failure_while_writing_the_program_leaves_nothing(exc, model_dir, tmp_path, monkeypatch):
    import safetensors.torch

    def partial_save(tensors, f, *a, **kw):
        Path(f).write_bytes(b"half a safetensors file")
        raise exc

    monkeypatch.setattr(safetensors.torch, "save_file", partial_save)
    out = tmp_path / "outs" / "art"
    if isinstance(exc, KeyboardInterrupt):
        assert _compile(model_dir, out) == 130  # Ctrl-C: one line, exit 130
    else:
        with pytest.raises(type(exc)):
            _compile(model_dir, out)
    assert not out.exists()
    assert not (tmp_path / "outs").exists()  # no .art.tmp-* either, nor the folder the compile made for it


def test_interrupt_while_checksumming_leaves_nothing_and_keeps_the_old_artifact(model_dir, eager_artifact, tmp_path,
                                                                                monkeypatch):
    old = _copy(eager_artifact, tmp_path / "outs", "art")
    before = (old / "manifest.json").read_bytes()
    calls = []

    def interrupted_sha256(path):
        calls.append(path)
        raise KeyboardInterrupt

    monkeypatch.setattr(artifact, "sha256", interrupted_sha256)
    assert _compile(model_dir, old, "--force") == 130  # replacing an existing artifact; Ctrl-C exits 130
    assert calls  # the program file was written; the manifest was being made
    assert [p.name for p in (tmp_path / "outs").iterdir()] == ["art"]
    assert (old / "manifest.json").read_bytes() == before
    monkeypatch.undo()
    load_program(old)  # still intact and verified


def test_interrupt_while_renaming_over_an_old_artifact_restores_it(model_dir, eager_artifact, tmp_path, monkeypatch):
    old = _copy(eager_artifact, tmp_path / "outs", "art")
    before = (old / "manifest.json").read_bytes()
    real_rename = os.rename

    def rename(src, dst):
        if ".tmp-" in str(src):  # the new artifact moving into place
            raise KeyboardInterrupt
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    assert _compile(model_dir, old, "--force") == 130  # Ctrl-C: one line, exit 130
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "outs").iterdir()] == ["art"]
    assert (old / "manifest.json").read_bytes() == before


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt"])
def test_interrupted_lowering_leaves_nothing(backend, model_dir, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    if backend == "tensorrt" and LOWERED != "tensorrt":
        pytest.skip("TensorRT bindings not installed")
    import cachec.backends.onnx_export as onnx_export

    def export_program(program, out_dir, progress=False):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "prologue.onnx").write_bytes(b"\x08\x07 half an onnx file")
        raise KeyboardInterrupt

    systmp = tmp_path / "systmp"
    systmp.mkdir()
    monkeypatch.setattr(onnx_export, "export_program", export_program)
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))  # the scratch ONNX dir of a tensorrt build
    out = tmp_path / "outs" / "art"
    assert _compile(model_dir, out, "--backend", backend) == 130
    assert not (tmp_path / "outs").exists()  # nor the folder the compile made for it
    assert list(systmp.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# fuzzing manifest loading

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _paths(doc, prefix=()):
    """Every (container-path, key) in a JSON document, depth first."""
    out = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for k, v in items:
        out.append(prefix + (k,))
        out.extend(_paths(v, prefix + (k,)))
    return out


@st.composite
def mutated(draw, manifest):
    doc = json.loads(json.dumps(manifest))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        key, value = path[-1], parent[path[-1]]
        kind = draw(st.sampled_from(["delete", "replace", "truncate", "same-type"]))
        if kind == "delete":
            del parent[key]
        elif kind == "truncate" and isinstance(value, (list, dict, str)) and len(value):
            n = draw(st.integers(0, len(value) - 1))
            parent[key] = value[:n] if not isinstance(value, dict) else dict(list(value.items())[:n])
        elif kind == "same-type" and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            parent[key] = draw(st.integers(-3, 2**40) if isinstance(value, int) else
                               st.floats() if isinstance(value, float) else
                               st.sampled_from(sorted({p[-1] for p in paths if isinstance(p[-1], str)}))
                               | st.text(max_size=8))
        else:
            parent[key] = draw(JSON)
    return doc


def _fuzz_dir(src: Path, tmp_path_factory) -> tuple[Path, dict]:
    art = tmp_path_factory.mktemp("fuzz") / "art"
    shutil.copytree(src, art)
    return art, json.loads((art / "manifest.json").read_text())


def _load_or_artifact_error(art: Path, doc) -> None:
    (art / "manifest.json").write_text(json.dumps(doc, allow_nan=True))
    try:
        load_program(art, trust_native=True)  # past the trust gate (TensorRT), into the checks fuzzed here
    except ArtifactError as exc:
        assert str(art) in str(exc)


@pytest.fixture(scope="module")
def eager_fuzz(eager_artifact, tmp_path_factory):
    return _fuzz_dir(eager_artifact, tmp_path_factory)


@pytest.fixture(scope="module")
def lowered_fuzz(lowered_artifact, tmp_path_factory):
    return _fuzz_dir(lowered_artifact, tmp_path_factory)


@pytest.mark.slow  # fuzzing reloads the artifact hundreds of times
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_lowered_manifest_loads_or_raises_artifact_error(lowered_fuzz, data):
    art, manifest = lowered_fuzz
    _load_or_artifact_error(art, data.draw(mutated(manifest)))


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_eager_manifest_loads_or_raises_artifact_error(eager_fuzz, data):
    art, manifest = eager_fuzz
    _load_or_artifact_error(art, data.draw(mutated(manifest)))


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=JSON, header=st.booleans())
def test_fuzz_random_json_documents(eager_fuzz, doc, header):
    art, _ = eager_fuzz
    if header and isinstance(doc, dict):  # get past the format/schema gate into the field checks
        doc = {"format": "cachec-artifact", "schema": 3, **doc}
    _load_or_artifact_error(art, doc)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=64))
def test_fuzz_random_bytes(eager_fuzz, raw):
    art, _ = eager_fuzz
    (art / "manifest.json").write_bytes(raw)
    try:
        load_program(art)
    except ArtifactError as exc:
        assert str(art) in str(exc)
