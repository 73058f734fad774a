"""Quantized weights: a torchao int8 weight-only model captures, plans and runs (item 3, partly).

``quantize_(model, Int8WeightOnlyConfig())`` turns each ``Linear`` weight into a tensor subclass
without a storage of its own; planning used to ask it for one (a raw "invalid python storage"
error). Under ``none`` the runtime equals the plain quantized model bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from small_models import make
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

import cachec
from cachec.models import example_inputs

quantization = pytest.importorskip("torchao.quantization", reason="torchao is not installed (extra: quant)")


def test_an_int8_weight_only_model_compiles_and_equals_the_plain_quantized_model():
    model = make("dit")
    kw = example_inputs(model, 2, 0)
    quantization.quantize_(model, quantization.Int8WeightOnlyConfig())
    assert is_traceable_wrapper_subclass(model.proj_out_2.weight)  # int8 data inside, no storage of its own
    rt = cachec.compile(model, kw, "none")
    with torch.no_grad():
        plain = model(**kw, return_dict=False)[0]
    assert torch.equal(rt(**kw)[0], plain)
