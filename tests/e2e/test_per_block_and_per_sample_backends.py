"""Per-block caching and per-sample decisions on ONNX Runtime agree with eager.

Both run variants the other policies do not: ``blockcache`` a chain of per-block variants whose
change probe reads a cache buffer that the block's write then refreshes (ONNX Runtime binds
outputs straight to cache buffers, so a cache loaded under another name must not be bound), and
``per_sample=1`` tails on a sub-batch of items (the backend sizes its outputs from the gathered
inputs). Schedules must be identical and outputs equal to float rounding.
"""

from __future__ import annotations

import pytest
import torch
from small_models import TEXT_TOKENS, make

import cachec
from cachec.models import example_inputs

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # ONNX export of every segment

T = 8


@pytest.fixture(scope="module")
def dit():
    model = make("dit")
    kw = example_inputs(model, 3, 0, text_tokens=TEXT_TOKENS)
    kw["class_labels"] = torch.tensor([0, 3, 6])
    return model, kw


@pytest.mark.parametrize("spec", ["blockcache:2", "fbcache:0.75,per_sample=1"])
def test_onnxruntime_matches_eager(dit, spec):
    model, kw = dit
    runs = {}
    for backend in ("eager", "onnxruntime"):
        rt = cachec.compile(model, kw, spec, num_steps=T, backend=backend)
        x, outs = kw["hidden_states"].clone(), []
        for t in torch.linspace(999, 0, T).round():
            out = rt(**dict(kw, hidden_states=x, timestep=torch.full((3,), int(t))))[0]
            outs.append(out)
            x = x - out / T
        controller = rt.branches["default"].controller
        runs[backend] = (outs, rt.stats.schedule, rt.stats.item_schedules, getattr(controller, "block_schedules", None))
    (eager, *eager_sched), (ort, *ort_sched) = runs["eager"], runs["onnxruntime"]
    assert eager_sched == ort_sched
    assert "P" in eager_sched[0] or "M" in eager_sched[0]  # blocks / items disagreed somewhere
    for o, r in zip(ort, eager, strict=True):
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-4)
