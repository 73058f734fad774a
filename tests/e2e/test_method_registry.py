"""Adding a cache method is one module: a Params dataclass, a controller, a plan, @register.

The toy method below is written exactly as a file under ``cachec/methods/`` would be; once
registered, the spec parser, ``cachec policies``, the planner and the runtime all take it
without any other change (issue 12's walk-through).
"""

from dataclasses import dataclass

import pytest
import torch
from diffusers import DiTTransformer2DModel

import cachec
from cachec.errors import PolicyError
from cachec.methods import _REGISTRY, METHODS, register
from cachec.methods.base import Controller, Method, Params, param
from cachec.models import example_inputs
from cachec.policy import describe_policies, parse_policy


@dataclass(frozen=True)
class EveryParams(Params):
    k: int = param(2, "reuse every k-th step", 2, 10)


class EveryController(Controller):
    def rule(self, step, signal):
        return step % self.policy.params.k != 0


class EveryMethod(Method):
    name = "every"
    doc = "toy: reuse every k-th step's attention/MLP outputs"
    granularity = "module"
    main = "k"
    Params = EveryParams
    controller_cls = EveryController

    def plan(self, planner):
        return planner.module_reuse()


@pytest.fixture
def every():
    register(EveryMethod)
    yield EveryMethod
    METHODS.pop("every")
    _REGISTRY.pop("every")


def test_a_registered_method_parses_lists_plans_and_runs(every):
    assert parse_policy("every:3").params.k == 3
    with pytest.raises(PolicyError, match="k=1 is out of range"):
        parse_policy("every:1")
    assert "every" in describe_policies() and "k=2" in describe_policies()
    torch.manual_seed(0)
    m = DiTTransformer2DModel(sample_size=8, in_channels=4, out_channels=4, num_layers=2, num_attention_heads=2,
                              attention_head_dim=8, num_embeds_ada_norm=10).eval()
    rt = cachec.compile(m, example_inputs(m, 2), "every:2", num_steps=4)
    kw = example_inputs(m, 2)
    for t in (900, 600, 300, 100):
        rt(**{**kw, "timestep": torch.full((2,), t)})
    assert rt.stats.schedule == "FFRF"  # step 0 is always full; then every 2nd step reuses
    assert set(rt.program.variants) == {"full", "reuse"}
