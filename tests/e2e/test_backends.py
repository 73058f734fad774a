"""ONNX Runtime and TensorRT lowering, checked against the eager backend and the manifest."""

import json
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DiTTransformer2DModel, FluxTransformer2DModel, PixArtTransformer2DModel, SD3Transformer2DModel

import cachec
from cachec.backends import get_backend
from cachec.cli import main
from cachec.errors import BackendError
from cachec.models import example_inputs

pytestmark = pytest.mark.slow  # ONNX export and ONNX Runtime trajectories on five models (tests/README.md)

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")


def _init(m):
    torch.manual_seed(1)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return m.eval()


def small(name):
    torch.manual_seed(0)
    if name == "dit":
        return _init(DiTTransformer2DModel(sample_size=8, in_channels=4, out_channels=4, num_layers=2,
                                           num_attention_heads=2, attention_head_dim=8, num_embeds_ada_norm=10))
    if name == "pixart":
        return _init(PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
                                              num_layers=2, sample_size=8, cross_attention_dim=16, caption_channels=12,
                                              norm_type="ada_norm_single", use_additional_conditions=False))
    if name == "flux":
        return _init(FluxTransformer2DModel(patch_size=1, in_channels=8, num_layers=1, num_single_layers=1,
                                            attention_head_dim=8, num_attention_heads=2, joint_attention_dim=12,
                                            pooled_projection_dim=6, guidance_embeds=True, axes_dims_rope=(2, 2, 4)))
    return _init(SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                                       num_attention_heads=2, joint_attention_dim=12, caption_projection_dim=16,
                                       pooled_projection_dim=6, out_channels=4, pos_embed_max_size=16))


MODELS = ("dit", "pixart", "flux", "sd3")
POLICIES = ("none", "fora:3", "fbcache:0.3,warmup=4,final=4", "teacache:0.03")
_programs: dict = {}
_onnx_dirs: dict = {}


def program_for(name, policy):
    if (name, policy) not in _programs:
        m = small(name)
        _programs[name, policy] = (m, cachec.build_program(m, example_inputs(m, 2, text_tokens=5), policy))
    return _programs[name, policy]


def onnx_dir_for(name, policy, tmp_root):
    from cachec.backends.onnx_export import export_program

    if (name, policy) not in _onnx_dirs:
        d = Path(tmp_root) / f"{name}-{policy.replace(':', '_').replace(',', '_').replace('=', '')}"
        files = export_program(program_for(name, policy)[1], d)
        _onnx_dirs[name, policy] = (d, files)
    return _onnx_dirs[name, policy]


def _tensorrt():
    """The tensorrt backend module, or a skip naming what is missing (its bindings are an extra)."""
    tensorrt = pytest.importorskip("cachec.backends.tensorrt")
    try:
        tensorrt.trt()
    except BackendError as exc:
        pytest.skip(str(exc))
    return tensorrt


def trajectory(rt, model, steps=20, seed=0):
    """Drive a runtime over a whole trajectory with a fixed update rule; returns the final latent."""
    kw = example_inputs(model, 3, seed=seed, text_tokens=5)
    x = kw.pop("hidden_states")
    flow = type(model).__name__ == "FluxTransformer2DModel"
    for i in range(steps):
        t = 1.0 - i / steps if flow else 999 - i * (1000 // steps)
        tt = torch.full_like(kw["timestep"], t)
        out = rt(hidden_states=x, **{**kw, "timestep": tt})[0]
        x = x - out / steps
    return x


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("policy", POLICIES)
def test_onnxruntime_matches_eager_over_a_trajectory(name, policy, tmp_path_factory):
    eager, ort = onnxruntime_vs_eager(name, policy, tmp_path_factory)
    if policy != "none":  # both the full and the cached variants ran
        assert "R" in eager.stats.schedule and "F" in eager.stats.schedule[1:], eager.stats.schedule


def onnxruntime_vs_eager(name, policy, tmp_path_factory):
    """Run one trajectory on eager and on ONNX Runtime; assert equal schedules and latents (rel 1e-4)."""
    model, program = program_for(name, policy)
    d, files = onnx_dir_for(name, policy, tmp_path_factory.getbasetemp())
    eager = cachec.CacheRuntime(program, num_steps=20)
    ort = cachec.CacheRuntime(program, num_steps=20, backend="onnxruntime",
                              backend_options={"onnx_dir": d, "onnx_files": files})
    a, b = trajectory(eager, model), trajectory(ort, model)
    assert eager.stats.schedule == ort.stats.schedule
    rel = ((a - b).norm() / a.norm()).item()
    assert rel <= 1e-4, rel
    return eager, ort


@pytest.mark.parametrize("name", MODELS)
def test_tensorrt_builds_every_variant_with_manifest_io(name, tmp_path_factory):
    tensorrt = _tensorrt()
    for policy in ("none", "fora:3", "fbcache:0.3"):
        _, program = program_for(name, policy)
        d, files = onnx_dir_for(name, policy, tmp_path_factory.getbasetemp())
        description = program.describe()
        for seg in program.segments:
            plan, io = tensorrt.build_engine(d / files[seg], max_batch=64)
            assert len(plan) > 0
            want = {
                "inputs": [{"name": "@" + n, "shape": [-1 if s == "B" else s for s in description["values"][n]["shape"]],
                            "dtype": description["values"][n]["dtype"]} for n in description["segments"][seg]["inputs"]],
                "outputs": [{"name": "@" + n, "shape": [-1 if s == "B" else s for s in description["values"][n]["shape"]],
                             "dtype": description["values"][n]["dtype"]} for n in description["segments"][seg]["outputs"]],
            }
            assert io == want, seg


@pytest.mark.parametrize("policy", ["fbcache:0.05", "fora:3"])
def test_tensorrt_artifact_stores_each_weight_once(policy, tmp_path, monkeypatch):
    _tensorrt()
    monkeypatch.setenv("CACHEC_TRT_CACHE", str(tmp_path / "trt-cache"))
    torch.manual_seed(0)
    m = DiTTransformer2DModel(sample_size=8, in_channels=4, out_channels=4, num_layers=2, num_attention_heads=16,
                              attention_head_dim=64, num_embeds_ada_norm=10)
    m.save_pretrained(tmp_path / "model")
    out = tmp_path / "art"
    assert main(["compile", str(tmp_path / "model"), "--policy", policy, "--backend", "tensorrt", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    params = sum(p.numel() * 4 for p in m.parameters())
    assert manifest["weight_bytes"] >= params
    ratio = manifest["artifact_bytes"] / manifest["weight_bytes"]
    assert ratio <= 1.1, ratio
    assert all(name.startswith("engines/") or name == "manifest.json" for name in manifest["files"])


def test_tensorrt_artifact_of_the_bundled_model_is_within_15_percent_of_its_weights(tmp_path, monkeypatch):
    """The bundled model is small: an engine's fixed kernels and padding (~0.2 MB per segment)
    made its artifact 2.3× its weights. Plans that are mostly overhead are stored deflated, and
    each round-trips to the exact plan the builder produced."""
    tensorrt = _tensorrt()
    monkeypatch.setenv("CACHEC_TRT_CACHE", str(tmp_path / "trt-cache"))
    out = tmp_path / "art"
    assert main(["compile", "builtin:tiny-dit", "--policy", "fora:3", "--backend", "tensorrt", "--out", str(out),
                 "--device", "cpu"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    ratio = manifest["artifact_bytes"] / manifest["weight_bytes"]
    assert ratio <= 1.15, ratio
    files = manifest["lowered"]["engine_files"]
    assert any(f.endswith(".plan.z") for f in files.values())
    # the stored plans are the builder's plans (the build cache holds them as built)
    built = {p.read_bytes() for p in (tmp_path / "trt-cache").glob("*.plan")}
    assert {tensorrt.read_plan(out / f) for f in files.values()} <= built


def _tensorrt_gpu_reason():
    if not torch.cuda.is_available():
        return "TensorRT engines run on a CUDA GPU; none here (the build is checked on CPU above)"
    from cachec.backends.tensorrt import trt

    if "rtx" in trt().__name__ and torch.cuda.get_device_capability() == (9, 0):
        return "TensorRT-RTX does not run on Hopper (compute capability 9.0)"
    return None


@pytest.mark.skipif(_tensorrt_gpu_reason() is not None, reason=str(_tensorrt_gpu_reason()))
def test_tensorrt_engines_match_eager_on_gpu(tmp_path):  # pragma: no cover - needs a TensorRT-capable GPU
    m = small("dit")
    out = tmp_path / "art"
    m.save_pretrained(tmp_path / "model")
    assert main(["compile", str(tmp_path / "model"), "--policy", "fora:3", "--backend", "tensorrt", "--out", str(out)]) == 0
    rt = cachec.load(out, num_steps=20, trust_native=True)  # engines are native code: our own, just built
    ref = cachec.compile(m.cuda(), example_inputs(m, 2), "fora:3", num_steps=20)
    with torch.device("cuda"):
        a, b = trajectory(rt, m), trajectory(ref, m)
    assert ((a - b).norm() / a.norm()).item() <= 1e-3


@pytest.mark.parametrize(
    "backend, hidden, extra", [("onnxruntime", ("onnxruntime",), "cachec[onnx]"),
                               ("tensorrt", ("tensorrt", "tensorrt_rtx", "tensorrt_rtx_bindings"), "cachec[tensorrt]")]
)
def test_missing_backend_names_the_extra(backend, hidden, extra, monkeypatch, tmp_path, capsys):
    for mod in hidden:
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(BackendError, match=extra.replace("[", r"\[").replace("]", r"\]")):
        get_backend(backend)
    assert main(["compile", "builtin:tiny-dit", "--backend", backend, "--out", str(tmp_path / "o")]) == 2
    assert extra in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# forecast coefficients (runtime inputs), a stateful forecast (FoCa), tail feedback (EasyCache)
# and a general probe/skip split (DBCache): the new kinds of segment I/O, on both exporters
NEW_KINDS = ("foca:3,warmup=1", "taylorseer:3,streams=step", "easycache:0.1,warmup=2", "dbcache:1,t=0.3,W=3")


@pytest.mark.parametrize("policy", NEW_KINDS)
def test_onnxruntime_runs_forecast_and_feedback_policies(policy, tmp_path_factory, name="dit"):
    eager, _ = onnxruntime_vs_eager(name, policy, tmp_path_factory)
    assert "R" in eager.stats.schedule, eager.stats.schedule
    _, program = program_for(name, policy)
    d, files = onnx_dir_for(name, policy, tmp_path_factory.getbasetemp())
    tensorrt = _tensorrt()  # and TensorRT builds every segment
    for seg in program.segments:
        plan, _ = tensorrt.build_engine(d / files[seg], max_batch=64)
        assert len(plan) > 0


# issue 24: FreqCa's one cached stream split into DCT bands (a low band reused, a high band forecast);
# AB-Cache and the hybrids reuse the forecast segments above, and tests/e2e/test_every_method.py checks
# every registered method against the ONNX Runtime backend's capabilities
@pytest.mark.parametrize("policy", ["freqca:3,warmup=1"])
def test_onnxruntime_runs_the_band_split_forecast(policy, tmp_path_factory):
    eager, _ = onnxruntime_vs_eager("dit", policy, tmp_path_factory)
    assert "R" in eager.stats.schedule, eager.stats.schedule


def test_max_batch_caps_the_artifact_and_tensorrt_defaults_to_a_serving_batch(tmp_path, monkeypatch, capsys):
    """A TensorRT profile's largest shape sizes the engine (at 1024, a FLUX-shaped attention
    segment could not be built); the cap is recorded and bad values are named."""
    _tensorrt()
    monkeypatch.setenv("CACHEC_TRT_CACHE", str(tmp_path / "trt-cache"))
    out = tmp_path / "trt"
    assert main(["compile", "builtin:tiny-dit", "--backend", "tensorrt", "--out", str(out), "--device", "cpu"]) == 0
    assert json.loads((out / "manifest.json").read_text())["program"]["meta"]["max_batch"] == 16
    out = tmp_path / "eager"
    assert main(["compile", "builtin:tiny-dit", "--out", str(out), "--max-batch", "4", "--device", "cpu"]) == 0
    assert json.loads((out / "manifest.json").read_text())["program"]["meta"]["max_batch"] == 4
    capsys.readouterr()
    for bad, message in (("0", "--max-batch must be 1..1024; got 0"), ("1", "below the batch the model was exported at")):
        assert main(["compile", "builtin:tiny-dit", "--out", str(tmp_path / f"bad{bad}"), "--max-batch", bad,
                     "--device", "cpu"]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / f"bad{bad}").exists()
