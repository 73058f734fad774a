"""Quantized weights: torchao int8/float8 models capture, plan and run (eager), ``none`` bit-exact.

``quantize_(model, Int8WeightOnlyConfig())`` turns each ``Linear`` weight into a tensor subclass
without a storage of its own; planning used to ask it for one (a raw "invalid python storage"
error). ``Int8DynamicActivationInt8WeightConfig`` exports its linears as ``_int_mm(...)
.reshape(...).add_(bias)``: merging two identical conditioning values then let one ``add_`` land
on a value another block reads (now a value changed in place through a view is never merged), and
``_int_mm`` was not counted in the FLOPs (now it counts as any matmul: a step of the quantized
model costs about the FLOPs of the float one).

Backends that cannot carry such weights (ONNX Runtime, TensorRT, AOTInductor; an artifact, which
stores plain tensors) refuse them by capability before any capture, naming the quantization (was:
a raw ONNX ``ConversionError`` after the export, or a ``program.json`` namespace error). An artifact's
``weight_bytes`` counts what an int8 weight stores (1 byte an element plus its scales); it counted
every subclass weight as a float tensor at address 0, once for all of them. A model quantized by a
library cachec cannot capture (bitsandbytes, GGUF) is refused at load with one message. Also here:
diffusers' ``TorchAoConfig``, Inductor, float8 weight-only on a CPU and dynamic float8 (GPU only).
"""

from __future__ import annotations

import pytest
import torch
from small_models import make
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

import cachec
from cachec.errors import ModelError
from cachec.models import example_inputs

quantization = pytest.importorskip("torchao.quantization", reason="torchao is not installed (extra: quant)")


@pytest.fixture(scope="module")
def float_flops():
    model = make("dit")
    return cachec.build_program(model, example_inputs(model, 2, 0)).variant_flops("full")


@pytest.mark.slow  # a capture per config
@pytest.mark.parametrize("config", ["Int8WeightOnlyConfig", "Int8DynamicActivationInt8WeightConfig"])
def test_an_int8_model_compiles_and_equals_the_plain_quantized_model(config, float_flops):
    model = make("dit")
    kw = example_inputs(model, 2, 0)
    quantization.quantize_(model, getattr(quantization, config)())
    assert is_traceable_wrapper_subclass(model.proj_out_2.weight)  # int8 data inside, no storage of its own
    rt = cachec.compile(model, kw, "none")
    with torch.no_grad():
        plain = model(**kw, return_dict=False)[0]
    assert torch.equal(rt(**kw)[0], plain)
    # within 1%: a small conditioning matmul that the float graph computes once stays duplicated in the
    # quantized one (its in-place bias add keeps it from being merged); before, _int_mm counted 0 (-86%)
    assert rt.program.variant_flops("full") == pytest.approx(float_flops, rel=0.01)


def _int8_weight_only():
    model = make("dit")
    kw = example_inputs(model, 2, 0)
    quantization.quantize_(model, quantization.Int8WeightOnlyConfig())
    return model, kw


@pytest.mark.slow  # an Inductor compile (about 12 s on 2 cores)
def test_an_int8_model_runs_on_inductor_close_to_the_plain_quantized_model():
    model, kw = _int8_weight_only()
    rt = cachec.compile(model, kw, "none", backend="inductor")
    with torch.no_grad():
        plain = model(**kw, return_dict=False)[0]
    # not bit-exact: Inductor fuses the dequantize into its own kernels (7e-7 apart on the tiny DiT)
    torch.testing.assert_close(rt(**kw)[0], plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt", "aotinductor"])
def test_backends_without_the_capability_refuse_quantized_weights_before_capture(backend, monkeypatch):
    from cachec.backends.registry import get_backend

    try:
        get_backend(backend)
    except Exception as exc:  # noqa: BLE001 - the backend's own package is missing here
        pytest.skip(f"{backend} is not usable here: {exc}")
    model, kw = _int8_weight_only()
    monkeypatch.setattr(cachec, "build_program", lambda *a, **k: pytest.fail("captured before refusing"))
    with pytest.raises(ModelError, match=rf"^weights quantized by torchao Int8Tensor \(int8 weight-only\) cannot be "
                                         rf"lowered to {backend}; use eager or inductor$"):
        cachec.compile(model, kw, "none", backend=backend)


def test_an_artifact_refuses_quantized_weights_and_weight_bytes_count_int8_as_one_byte(tmp_path):
    from cachec import artifact
    from cachec.capture import capture
    from cachec.planner import compile_program
    from cachec.policy import parse_policy

    model, kw = _int8_weight_only()
    plain = make("dit")
    float_bytes = sum(t.numel() * t.element_size() for t in [*plain.parameters(), *plain.buffers()])
    # each int8 weight: 1 byte an element instead of 4, plus a float32 scale and an int8 zero point per row
    saved = sum(3 * w.numel() - 5 * w.shape[0] for w in model.state_dict().values() if type(w).__name__ == "Int8Tensor")
    cap = capture(model, kw)
    assert saved > 0 and artifact.weight_bytes(cap) == float_bytes - saved
    program = compile_program(cap.copy(), parse_policy("none"))
    with pytest.raises(ModelError, match=r"^weights quantized by torchao Int8Tensor \(int8 weight-only\) cannot be "
                                         r"saved in an artifact .*cachec.compile"):
        artifact.save(tmp_path / "out", program, cap, "m", [], backend="eager")
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())  # nothing half-written


def test_a_model_quantized_through_diffusers_torchao_config_compiles_bit_exact(tmp_path):
    from diffusers import TorchAoConfig

    float_model = make("dit")
    float_model.save_pretrained(tmp_path)
    model = type(float_model).from_pretrained(
        tmp_path, quantization_config=TorchAoConfig(quantization.Int8WeightOnlyConfig()))
    assert is_traceable_wrapper_subclass(model.proj_out_2.weight)
    kw = example_inputs(model, 2, 0)
    rt = cachec.compile(model, kw, "none")
    with torch.no_grad():
        plain = model(**kw, return_dict=False)[0]
    assert torch.equal(rt(**kw)[0], plain)


def _float8(config: str, device: str):
    model = make("dit").to(device, torch.bfloat16)
    kw = {k: v.to(device, torch.bfloat16) if v.is_floating_point() else v.to(device)
          for k, v in example_inputs(model, 2, 0).items()}
    quantization.quantize_(model, getattr(quantization, config)())
    assert type(model.proj_out_2.weight).__name__ == "Float8Tensor"
    return model, kw


def test_a_float8_weight_only_model_compiles_and_equals_the_plain_quantized_model():
    model, kw = _float8("Float8WeightOnlyConfig", "cpu")  # float8 weights, bf16 matmuls: runs on a CPU
    rt = cachec.compile(model, kw, "none")
    with torch.no_grad():
        plain = model(**kw, return_dict=False)[0]
    assert torch.equal(rt(**kw)[0], plain)
    with pytest.raises(ModelError, match=r"^weights quantized by torchao Float8Tensor \(float8_e4m3fn weight-only\) "
                                         r"cannot be lowered to onnxruntime"):
        cachec.compile(model, kw, "none", backend="onnxruntime")


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="float8 activations need torch._scaled_mm on a CUDA GPU of compute capability 8.9+")
def test_a_dynamic_float8_model_compiles_and_equals_the_plain_quantized_model():
    model, kw = _float8("Float8DynamicActivationFloat8WeightConfig", "cuda")
    rt = cachec.compile(model, kw, "none")
    with torch.no_grad():
        plain = model(**kw, return_dict=False)[0]
    assert torch.equal(rt(**kw)[0], plain)


@pytest.mark.parametrize(("config", "named"), [({"quant_method": "bitsandbytes", "load_in_4bit": True}, "bitsandbytes 4-bit"),
                                               ({"quant_method": "gguf", "compute_dtype": "bfloat16"}, "GGUF")])
def test_a_model_quantized_by_a_library_cachec_cannot_capture_is_refused_at_load(config, named, tmp_path):
    import json

    from cachec.models import resolve

    make("dit").save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "quantization_config": config}))
    with pytest.raises(ModelError, match=rf"^{tmp_path} is quantized with {named}, which cachec cannot capture; "
                                         r"accepted: unquantized weights or torchao's"):
        resolve(str(tmp_path))
