"""Quantized weights: torchao int8 models capture, plan and run (eager), ``none`` bit-exact.

``quantize_(model, Int8WeightOnlyConfig())`` turns each ``Linear`` weight into a tensor subclass
without a storage of its own; planning used to ask it for one (a raw "invalid python storage"
error). ``Int8DynamicActivationInt8WeightConfig`` exports its linears as ``_int_mm(...)
.reshape(...).add_(bias)``: merging two identical conditioning values then let one ``add_`` land
on a value another block reads (now a value changed in place through a view is never merged), and
``_int_mm`` was not counted in the FLOPs (now it counts as any matmul: a step of the quantized
model costs about the FLOPs of the float one).
"""

from __future__ import annotations

import pytest
import torch
from small_models import make
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

import cachec
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
