"""torch.compile(model, backend="cachec"): equal to eager cachec, one graph a step, no recompiles."""

import pytest
import torch
from diffusers import DiTTransformer2DModel

import cachec
from cachec.models import example_inputs
from cachec.torch_compile import runtimes_of


def _model():
    torch.manual_seed(0)
    m = DiTTransformer2DModel(sample_size=8, in_channels=4, out_channels=4, num_layers=2, num_attention_heads=2,
                              attention_head_dim=8, num_embeds_ada_norm=10).eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return m


def trajectory(f, steps=10, seed=0):
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
    for i in range(steps):
        t = torch.full((2,), 900 - 90 * i)
        out = f(hidden_states=x, timestep=t, class_labels=torch.tensor([1, 2]), return_dict=False)[0]
        x = x - 0.1 * out
    return x


def test_backend_is_registered_by_entry_point():
    assert "cachec" in torch._dynamo.list_backends(exclude_tags=())


@pytest.mark.parametrize("policy, lower", [("fora:3", "inductor"), ("fbcache:0.3,warmup=3", "eager")])
def test_compiled_model_equals_eager_cachec_without_recompiles(policy, lower):
    torch._dynamo.reset()
    m = _model()
    reference = cachec.compile(m, example_inputs(m, 2), policy, num_steps=10)
    compiled = torch.compile(m, backend="cachec", options={"policy": policy, "num_steps": 10, "lower": lower})
    torch._dynamo.utils.counters.clear()
    with torch.no_grad():
        first = trajectory(compiled)
    expected = trajectory(reference)
    torch.testing.assert_close(first, expected, atol=1e-5, rtol=1e-5)
    # one Dynamo graph for the whole step, i.e. no graph break inside it
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    (runtime,) = runtimes_of(compiled)
    assert runtime.stats.schedule == reference.stats.schedule
    assert "R" in runtime.stats.schedule
    # a second trajectory (new seed) compiles nothing and still matches
    with torch.compiler.set_stance("fail_on_recompile"), torch.no_grad():
        second = trajectory(compiled, seed=1)
    torch.testing.assert_close(second, trajectory(reference, seed=1), atol=1e-5, rtol=1e-5)


def test_reset_starts_a_new_trajectory():
    torch._dynamo.reset()
    m = _model()
    compiled = torch.compile(m, backend="cachec", options={"policy": "fora:4", "lower": "eager"})
    kw = dict(hidden_states=torch.randn(2, 4, 8, 8), class_labels=torch.tensor([1, 2]))
    with torch.no_grad():
        compiled(timestep=torch.full((2,), 900), **kw)
        compiled(timestep=torch.full((2,), 800), **kw)
        (runtime,) = runtimes_of(compiled)
        assert runtime.stats.schedule == "FR"
        cachec.reset(compiled)
        compiled(timestep=torch.full((2,), 700), **kw)  # continues in time, but was reset: full
    assert runtime.stats.schedule == "F"


def test_unknown_option_is_rejected():
    torch._dynamo.reset()
    compiled = torch.compile(_model(), backend="cachec", options={"policy": "fora:3", "bogus": 1})
    with pytest.raises(Exception, match="unknown cachec options"):
        compiled(hidden_states=torch.randn(2, 4, 8, 8), timestep=torch.full((2,), 900), class_labels=torch.tensor([1, 2]))
