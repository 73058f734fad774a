"""A hybrid policy lowered to Inductor runs as eager cachec does (same schedule, same outputs).

The hybrid adds no new kind of segment (its forecast is the weightless linear mix of TaylorSeer),
so the compiled backends take it as they take a forecasting policy; this checks the whole path on
a two-block DiT, with the decision's irregular full steps feeding the forecast coefficients."""

import pytest
import torch
from diffusers import DiTTransformer2DModel

import cachec
from cachec.models import example_inputs

STEPS = 10


def _model():
    torch.manual_seed(0)
    m = DiTTransformer2DModel(sample_size=8, in_channels=4, out_channels=4, num_layers=2, num_attention_heads=2,
                              attention_head_dim=8, num_embeds_ada_norm=10).eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return m


def trajectory(rt):
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for i in range(STEPS):
        out = rt(hidden_states=x, timestep=torch.full((2,), 900 - 90 * i), class_labels=torch.tensor([1, 2]))[0]
        x = x - 0.1 * out
    return x


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_hybrid_on_inductor_equals_eager(backend="inductor"):
    m = _model()
    spec = "static:FFFRFRRFRR+taylorseer:O=1"
    program = cachec.build_program(m, example_inputs(m, 2), spec)
    eager = cachec.CacheRuntime(program, spec, num_steps=STEPS)
    lowered = cachec.CacheRuntime(program, spec, backend=backend, num_steps=STEPS)
    with torch.no_grad():
        want, got = trajectory(eager), trajectory(lowered)
    assert lowered.stats.schedule == eager.stats.schedule == "FFFRFRRFRR"
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
