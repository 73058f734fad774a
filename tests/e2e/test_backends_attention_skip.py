"""DeepCache, T-GATE, PAB and FasterCache on ONNX Runtime (and TensorRT where it can build): their variants are
static, so every segment exports, and a trajectory on ONNX Runtime equals the eager one."""

from __future__ import annotations

import pytest
from trajectories import Driver

import cachec
from cachec.errors import BackendError

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # ONNX export of every segment

T = 12
DRIVER = Driver(T, 2)
POLICIES = {"deepcache:3": "unet", "tgate:5,sa=2": "unet", "pab:2,1,3,lo=100,hi=900": "unet",
            "fastercache:2,lo=-1,hi=900": "pixart"}


@pytest.mark.parametrize("policy", list(POLICIES))
def test_onnxruntime_matches_eager_and_tensorrt_builds(policy, tmp_path):
    from cachec.backends.onnx_export import export_program

    short = POLICIES[policy]
    model, kw = DRIVER.model_and_inputs(short)
    program = cachec.build_program(model, kw, policy)
    files = export_program(program, tmp_path)
    eager = cachec.CacheRuntime(program, num_steps=T)
    ort = cachec.CacheRuntime(program, num_steps=T, backend="onnxruntime",
                              backend_options={"onnx_dir": tmp_path, "onnx_files": files})
    (a, _), (b, _) = DRIVER.run(eager, short), DRIVER.run(ort, short)
    assert eager.stats.schedule == ort.stats.schedule and "R" in eager.stats.schedule
    assert ((a - b).norm() / a.norm()).item() <= 1e-4
    tensorrt = pytest.importorskip("cachec.backends.tensorrt")
    try:
        tensorrt.trt()
    except BackendError as exc:
        pytest.skip(f"ONNX Runtime matched; TensorRT cannot build here: {exc}")
    for seg in program.segments:
        plan, _ = tensorrt.build_engine(tmp_path / files[seg], max_batch=64)
        assert len(plan) > 0, seg
