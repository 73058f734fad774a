"""An operator the ONNX exporter cannot convert is one clear BackendError naming the segment, the
model class and the exporter's own reason, not the exporter's raw ConversionError (found on
Qwen-Image-Edit with the onnxruntime backend: docs/workflows.md)."""

from __future__ import annotations

import pytest
import torch
from torch import fx
from torch.onnx._internal.exporter._errors import ConversionError

from cachec.backends import onnx_export
from cachec.errors import BackendError
from cachec.graph_keys import OUTPUTS_KEY
from cachec.program import ModelFacts, Program, Segment, ValueSpec


def _one_segment_program() -> Program:
    gm = fx.symbolic_trace(lambda x: torch.relu(x))
    gm.meta[OUTPUTS_KEY] = ["relu"]
    return Program({"s0": Segment("s0", gm, role="region")}, {"full": []}, ["x"], "relu",
                   {"x": ValueSpec(["B", 4], "float32"), "relu": ValueSpec(["B", 4], "float32")},
                   model=ModelFacts(model_class="ToyTransformer"))


def test_a_conversion_failure_names_the_segment_and_the_operator(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        try:
            raise RuntimeError("No ONNX function found for <OpOverload(op='aten.polar', overload='default')>")
        except RuntimeError as inner:
            raise ConversionError("Failed to convert the exported program to an ONNX model.\nNext steps: ...") \
                from inner

    monkeypatch.setattr(torch.onnx, "export", refuse)
    with pytest.raises(BackendError) as info:
        onnx_export.export_segment(_one_segment_program(), "s0", tmp_path / "s0.onnx")
    message = str(info.value)
    assert "segment 's0' of ToyTransformer" in message
    assert "aten.polar" in message  # the exporter's innermost reason, where the operator is named
    assert "eager, inductor and aotinductor" in message and "\n" not in message
