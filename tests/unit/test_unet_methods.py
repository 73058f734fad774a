"""The rules of the U-Net methods FasterDiffusion and VCUT without a model: key steps and stages
from their definitions (docs/methods.md), the variants a step runs, and the errors for bad
parameters and for models they do not fit (read from a planner stand-in: no export).
Their trajectories against hook references are in tests/reference/test_fasterdiffusion_vcut.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from cachec.errors import ModelError, PolicyError
from cachec.methods.fasterdiffusion import paper_key_steps
from cachec.methods.skip_branch import encoder_features
from cachec.policy import parse_policy

KEYS_50LS = [0, 1, 2, 3, 5, 10, 15, 25, 35]  # the reference's default ('50ls') key steps


def schedule(spec: str, steps: int) -> str:
    ctl = parse_policy(spec).controller(steps)
    return "".join("F" if ctl.decide(s) else "R" for s in range(steps))


def vcut_steps(spec: str, steps: int, batch: int = 2) -> list[str]:
    """The variant each step of a ``vcut`` trajectory runs."""
    ctl, ctx = parse_policy(spec).controller(steps), SimpleNamespace(batch=batch)
    return [next(iter(ctl.actions(s, ctx))).variant for s in range(steps)]


def test_paper_schedule_is_the_reference_list_at_50_steps():
    assert paper_key_steps(50) == KEYS_50LS
    assert paper_key_steps(100) == [2 * k for k in KEYS_50LS]


@pytest.mark.parametrize(("spec", "match"), [
    ("fasterdiffusion:0", "N=0 is out of range"),
    ("fasterdiffusion:N=1001", "out of range"),
    ("fasterdiffusion:schedule=sqrt", "unknown schedule='sqrt'; accepted: paper, uniform"),
    ("fasterdiffusion:3,warmup=-1", "warmup=-1 is out of range"),
])
def test_bad_parameters_say_what_is_accepted(spec, match):
    with pytest.raises(PolicyError, match=match):
        parse_policy(spec)


def test_paper_schedule_needs_the_trajectory_length():
    with pytest.raises(PolicyError, match="trajectory length"):
        parse_policy("fasterdiffusion").controller(None)


def test_a_model_without_skip_concatenations_has_no_encoder_to_propagate():
    """A transformer's graph has no up-block concatenation (a planner's graph only is read: no capture)."""
    gm = torch.fx.symbolic_trace(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU()))
    planner = SimpleNamespace(gm=gm, captured=SimpleNamespace(model_class="DiTTransformer2DModel"))
    with pytest.raises(ModelError, match="DiTTransformer2DModel has no U-Net encoder/decoder.*fora"):
        encoder_features(planner, "fasterdiffusion:2")


@pytest.mark.parametrize(("spec", "match"), [
    ("vcut:0", "s0=0 is out of range"),
    ("vcut:3,cfg=2", "cfg=2 is out of range"),
    ("vcut:3,cfg=-1", "cfg=-1 is out of range"),
])
def test_vcut_bad_parameters_say_what_is_accepted(spec, match):
    with pytest.raises(PolicyError, match=match):
        parse_policy(spec)


def test_vcut_refuses_a_model_without_cross_attention():
    planner = SimpleNamespace(regions=[SimpleNamespace(kind="attn", segment="b0_attn")],
                              captured=SimpleNamespace(model_class="DiTTransformer2DModel"))
    with pytest.raises(ModelError, match="DiTTransformer2DModel has no cross-attention.*fora"):
        parse_policy("vcut:3").plan(planner)


def test_fasterdiffusion_key_steps():
    assert schedule("fasterdiffusion", 50) == "".join("F" if s in KEYS_50LS else "R" for s in range(50))
    assert schedule("fasterdiffusion", 20) == "FFFRFRFRRRFRRRFRRRRR"  # 0, 1, 2, 4, 6, 10, 14: int(k * 20 / 50)
    assert schedule("fasterdiffusion:4,schedule=uniform", 10) == "FRRRFRRRFR"
    assert schedule("fasterdiffusion:1,schedule=uniform", 6) == "F" * 6


def test_vcut_stages_and_the_step_that_fills_the_cache():
    assert vcut_steps("vcut", 4) == ["full_mean", "reuse_cross", "reuse_cross", "reuse_cross"]
    assert vcut_steps("vcut:3", 5) == ["full", "full", "full_mean", "reuse_cross", "reuse_cross"]
    assert vcut_steps("vcut:3,cfg=0", 5) == ["full", "full", "full", "reuse_cross", "reuse_cross"]
    assert vcut_steps("vcut:1,warmup=2", 4) == ["full", "full_mean", "reuse_cross", "reuse_cross"]
    assert vcut_steps("vcut:2,final=1", 4) == ["full", "full_mean", "reuse_cross", "full"]
    assert vcut_steps("vcut:9", 4) == ["full"] * 4  # s0 beyond the trajectory: none


def test_vcut_cfg_mean_refuses_an_odd_batch():
    with pytest.raises(PolicyError, match="batch of even size; this call has batch 3.*cfg=0"):
        vcut_steps("vcut:2", 4, batch=3)
    assert vcut_steps("vcut:2,cfg=0", 3, batch=3) == ["full", "full", "reuse_cross"]
