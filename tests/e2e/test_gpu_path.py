"""The GPU path, checked where a CPU can check it: batch 1, device/dtype options and their errors,
moving a runtime, the conditioning dedupe pass against a hand-built graph, and FLUX.1-dev planned on
the meta device against the published FLOPs. Tests that need a GPU skip with the reason."""

import json

import pytest
import torch
from torch import fx

import cachec
from cachec.cli import main
from cachec.devices import resolve_device, resolve_dtype
from cachec.errors import BackendError
from cachec.graph_keys import COND_KEY
from cachec.models import resolve
from cachec.passes.dedupe_conditioning import DedupeConditioning

pytestmark = pytest.mark.usefixtures("one_thread")
aten = torch.ops.aten
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def tiny():
    return resolve("builtin:tiny-dit")


def test_batch_one_compiles_and_equals_the_plain_model(tiny):
    """torch.export specialises a size-1 batch; cachec captures it as batch 2 and serves batch 1."""
    kw = tiny.example_inputs(batch=1)
    rt = cachec.compile(tiny.model, kw, "fora:3", num_steps=4)
    with torch.no_grad():
        ref = tiny.model(**kw, return_dict=False)[0]
    torch.testing.assert_close(rt(**kw).sample, ref, rtol=0, atol=0)  # a first step is full
    two = tiny.example_inputs(batch=2)
    assert rt(**two).sample.shape[0] == 2  # the batch stays dynamic


def test_cli_runs_at_batch_one(model_dir, tmp_path, capsys):
    assert main(["run", str(model_dir), "--policy", "fora:2", "--steps", "4", "--batch", "1", "--json",
                 "--out", str(tmp_path / "s")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["batch"] == 1 and report["schedule"] == "FRFR"
    assert (tmp_path / "s" / "samples_fora_2.png").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "MODEL", "--batch", "0"], "--batch must be at least 1"),
        (["run", "MODEL", "--batch", "-1"], "--batch must be at least 1"),
        (["compile", "MODEL", "--out", "/nonexistent/dir/out"], "does not exist"),
        (["run", "MODEL", "--out", "/nonexistent/dir/out"], "does not exist"),
        (["run", "MODEL", "--policy", "fbcache:nan"], "not a finite number"),
        (["run", "MODEL", "--policy", "fora:3,warmup=10", "--steps", "8"], "nothing would be cached"),
        (["run", "MODEL", "--device", "tpu"], "unknown device"),
        (["run", "MODEL", "--mode", "reduce-overhead"], "applies to the inductor backend only"),
        (["inspect", "MODEL", "--image-size", "100"], "multiple of 8"),
    ],
)
def test_bad_input_is_named(argv, message, model_dir, tmp_path, capsys):
    argv = [str(model_dir) if a == "MODEL" else a for a in argv]
    if "--out" not in argv and argv[0] == "run":
        argv += ["--out", str(tmp_path / "s")]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_on_a_machine_without_one_is_refused(model_dir, capsys):
    assert main(["run", str(model_dir), "--device", "cuda", "--steps", "2"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_sequential_cfg_branches_stay_apart_over_trajectories_without_reading_every_timestep(tiny):
    """Two calls per step at the same timestep (sequential CFG, no cache_context), trajectory length
    known: after learning the pattern the runtime counts calls instead of reading timesteps, and
    every later trajectory still gives each branch its own steps (each equal to that branch run alone)."""
    steps = 4
    cond, uncond = tiny.example_inputs(batch=2, seed=1), tiny.example_inputs(batch=2, seed=2)
    rt = cachec.compile(tiny.model, cond, "fora:2", num_steps=steps)
    alone = {name: cachec.compile(tiny.model, cond, "fora:2", num_steps=steps) for name in ("cond", "uncond")}
    for _ in range(3):
        for i in range(steps):
            t = torch.full((2,), 900 - 200 * i)
            for name, kw in (("cond", cond), ("uncond", uncond)):
                got = rt(**{**kw, "timestep": t}).sample
                torch.testing.assert_close(got, alone[name](**{**kw, "timestep": t}).sample, rtol=0, atol=0)
    assert set(rt.branches) == {"default", "call1"}
    assert [h.schedule for h in rt.branches["call1"].history] == ["FRFR"] * 3


def test_forecast_coefficients_are_uploaded_once_not_every_step(tiny, monkeypatch):
    """A forecast's coefficients are host-computed step inputs; ``torch.tensor(value, device=cuda)``
    waits for its copy, so a step that made one would stall the host. Their values repeat, so from
    the second trajectory on a step makes no tensor from host data, and the result is unchanged."""
    kw = tiny.example_inputs(batch=2)
    steps = [{**kw, "timestep": torch.full_like(kw["timestep"], 900 - 100 * i)} for i in range(6)]
    fresh = cachec.compile(tiny.model, kw, "taylorseer:3,O=2", num_steps=6)
    ref = [fresh(**step).sample for step in steps]
    assert "R" in fresh.stats.schedule  # forecasts ran
    rt = cachec.compile(tiny.model, kw, "taylorseer:3,O=2", num_steps=6)
    made = []
    real_tensor = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: made.append(a) or real_tensor(*a, **k))
    for trajectory in range(2):
        rt.reset()
        made.clear()
        for step, expected in zip(steps, ref, strict=True):
            torch.testing.assert_close(rt(**step).sample, expected, rtol=0, atol=0)
        assert made if trajectory == 0 else made == []  # each distinct value is made once
    assert rt.stats.schedule == fresh.stats.schedule


def test_device_and_dtype_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("bf16") is torch.bfloat16
    with pytest.raises(cachec.CachecError, match="accepted: fp32, bf16, fp16"):
        resolve_dtype("fp8")


def test_runtime_moves_and_refuses_another_dtype(tiny):
    kw = tiny.example_inputs(batch=2)
    rt = cachec.compile(tiny.model, kw, "fora:3", num_steps=4)
    out = rt(**kw).sample
    assert rt.to("cpu") is rt and rt.device == torch.device("cpu")
    with pytest.raises(cachec.ShapeError, match="compiled for torch.float32"):
        rt.to(torch.float16)
    torch.testing.assert_close(rt(**kw).sample, out)


def test_eager_artifact_loads_on_a_named_device(model_dir, tmp_path):
    out = tmp_path / "a"
    assert main(["compile", str(model_dir), "--policy", "fora:2", "--out", str(out)]) == 0
    rt = cachec.load(out, device="cpu", num_steps=4)
    assert rt.device == torch.device("cpu")


def test_artifacts_of_lowered_files_follow_to_or_say_why_they_cannot(model_dir, tmp_path, capsys):
    """``pipe.to(device)`` reaches ``CacheRuntime.to``. ONNX Runtime, TensorRT and AOTInductor have no
    weights to move: their files run where the step's inputs are, as far as the backend can run
    there, and each says why it cannot (checked here for a GPU without asking torch for one)."""
    from cachec.backends import artifact_backend

    out = tmp_path / "ort"
    assert main(["compile", str(model_dir), "--policy", "fora:2", "--backend", "onnxruntime", "--out", str(out),
                 "--device", "cpu"]) == 0
    capsys.readouterr()
    # inspect has no graphs to count ops on: it says so, with the segments' FLOPs
    assert main(["inspect", str(out), "--json"]) == 0
    costs = json.loads(capsys.readouterr().out)["variant_costs"]
    assert costs["reuse"]["dispatched_ops"] is None and "lowered files" in costs["reuse"]["note"]
    assert 0 < costs["reuse"]["flops_per_sample"] < costs["full"]["flops_per_sample"]
    rt = cachec.load(out, device="cpu", num_steps=4)
    assert rt.device == torch.device("cpu")  # before any call: what a pipeline's execution device reads
    kw = resolve(str(model_dir)).example_inputs(batch=2)
    first = rt(**kw).sample
    assert rt.to("cpu") is rt and rt.device == torch.device("cpu")
    rt.reset()
    torch.testing.assert_close(rt(**kw).sample, first, rtol=0, atol=0)
    with pytest.raises(cachec.ShapeError, match="onnxruntime backend runs on cpu or cuda, not meta"):
        rt.to("meta")
    cuda = torch.device("cuda")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert "pip install onnxruntime-gpu" in artifact_backend("onnxruntime").move_problem(rt.program, cuda)
    assert "runs on cuda, not cpu" in artifact_backend("tensorrt").move_problem(rt.program, torch.device("cpu"))
    aoti = artifact_backend("aotinductor")
    assert "compile it again with --device cuda" in aoti.move_problem(rt.program, cuda, aoti_device="cpu")
    assert aoti.move_problem(rt.program, torch.device("cpu"), aoti_device="cpu") is None


def _graph_with_duplicates() -> fx.GraphModule:
    """Two identical sinusoid chains on the timestep (mergeable) and two ``arange(4).div_(2)`` tables
    built in place (not mergeable: one shared tensor would be divided twice)."""
    g = fx.Graph()
    t = g.placeholder("timestep")
    outs = []
    for _ in range(2):
        freqs = g.call_function(aten.arange.default, (4,), {"dtype": torch.float32})
        arg = g.call_function(aten.mul.Tensor, (g.call_function(aten.unsqueeze.default, (t, 1)), freqs))
        outs.append(g.call_function(aten.sin.default, (arg,)))
        table = g.call_function(aten.arange.default, (4,), {"dtype": torch.float32})
        outs.append(g.call_function(aten.div_.Tensor, (table, 2.0)))
    g.output(tuple(outs))
    for n in g.nodes:
        if n.op == "call_function":
            n.meta[COND_KEY] = True
    return fx.GraphModule(torch.nn.Module(), g)


def test_dedupe_merges_identical_conditioning_but_never_a_value_changed_in_place():
    gm = _graph_with_duplicates()
    t = torch.tensor([3.0, 5.0])
    before = gm(t)
    result = DedupeConditioning()(gm)
    gm.recompile()
    assert result.modified
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets.count(aten.sin.default) == 1  # the sinusoid chain is computed once
    assert targets.count(aten.div_.Tensor) == 2 and targets.count(aten.arange.default) == 3  # the in-place tables stay two
    for a, b in zip(gm(t), before, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_flux_planned_on_meta_matches_the_published_flops(capsys):
    """FLUX.1-dev (12 B parameters) planned without weights on this machine; an uncached 50-step
    trajectory at 1024² with 512 prompt tokens is 3719.5 TFLOPs in DuCa's Table II."""
    assert main(["inspect", "arch:flux.1-dev", "--device", "meta", "--dtype", "bf16", "--policy", "fora:3",
                 "--image-size", "1024", "--text-tokens", "512", "--batch", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["trajectory"]["none_tflops_per_sample"] == pytest.approx(3719.5, rel=0.01)
    costs = report["variant_costs"]
    assert costs["reuse"]["dispatched_ops"] < 0.25 * costs["full"]["dispatched_ops"]
    assert costs["reuse"]["flops_per_sample"] < 0.01 * costs["full"]["flops_per_sample"]
    # a cached step needs the adaLN gates, not the shifts and scales of the modules it skips: each double
    # block's two 6-chunk projections keep 2 chunks, each single block's 3-chunk projection keeps 1
    width = 3072
    narrowed = 19 * 2 * (4 * width) * width * 2 + 38 * (2 * width) * width * 2
    reuse = costs["reuse"]
    assert reuse["segment_flops_per_sample"] - reuse["flops_per_sample"] == pytest.approx(narrowed, rel=1e-9)
    assert costs["full"]["segment_flops_per_sample"] == costs["full"]["flops_per_sample"]  # reads every chunk


@needs_gpu
def test_cuda_graph_variants_equal_eager_on_a_gpu(tiny):
    model = resolve("builtin:tiny-dit", device="cuda").model
    kw = {k: v.cuda() for k, v in tiny.example_inputs(batch=2).items()}
    eager = cachec.compile(model, kw, "fora:3", num_steps=6)
    graphs = cachec.compile(model, kw, "fora:3", num_steps=6, backend="inductor",
                            backend_options={"mode": "reduce-overhead"})
    for i in range(6):
        step = {**kw, "timestep": torch.full_like(kw["timestep"], 900 - 100 * i)}
        torch.testing.assert_close(graphs(**step).sample, eager(**step).sample, rtol=1e-4, atol=1e-4)
    assert graphs.stats.schedule == "FRRFRR"


def test_onnxruntime_runs_on_torchs_stream_when_it_can_and_names_what_to_install_when_it_cannot():
    import onnxruntime
    from onnx import TensorProto, helper

    from cachec.backends.onnxruntime import check_device, default_providers

    # a GPU and onnxruntime-gpu: CUDA first, on torch's stream (the handle is passed through)
    cuda = default_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], 0, 1234)
    assert cuda[0] == ("CUDAExecutionProvider", {"device_id": "0", "has_user_compute_stream": "1",
                                                 "user_compute_stream": "1234"})
    assert cuda[1:] == ["CPUExecutionProvider"]
    # onnxruntime-gpu without a GPU, or a GPU without onnxruntime-gpu: the CPU only
    assert default_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], None, None) == ["CPUExecutionProvider"]
    assert default_providers(["CPUExecutionProvider"], 0, 1234) == ["CPUExecutionProvider"]
    # a real CPU session handed GPU inputs is refused with what to install
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    check_device(sess, torch.device("cpu"))
    with pytest.raises(BackendError, match="pip install onnxruntime-gpu"):
        check_device(sess, torch.device("cuda"))
