"""The U-Net methods FasterDiffusion (encoder propagation) and VCUT (cross-attention cut) against
independent hook references, over whole trajectories, sharing one capture of the small U-Net.

The references wrap modules of the original small ``UNet2DConditionModel``:
``tests/reference_fasterdiffusion.py`` its encoder (``conv_in``, down blocks, mid block) as the paper's
reference forward skips them, ``tests/reference_vcut.py`` its cross-attention modules. The driver is
the shared one (``tests/trajectories.py``: 20 steps, batch 2 — for VCUT's ``cfg=1`` one
``[uncond; cond]`` pair — fp32). Per setting: the schedule, every step's output bit for bit, the final
latent; the degenerate settings equal ``none`` (or T-GATE); bad parameters and models the method does
not fit raise clear errors.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from reference_fasterdiffusion import KEYS_50LS, FasterDiffusionReference
from reference_vcut import VcutReference
from trajectories import Driver

import cachec
from cachec.errors import ModelError, PolicyError
from cachec.methods.fasterdiffusion import paper_key_steps
from cachec.methods.skip_branch import encoder_features
from cachec.policy import parse_policy

T = 20
DRIVER = Driver(T, 2)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True, scope="module")
def _capture_once_per_model(capture_once_per_model):
    """One capture of the U-Net, every policy planned on a copy (tests/conftest.py)."""


_PROGRAMS: dict = {}


def compiled(spec: str) -> cachec.CacheRuntime:
    """A runtime for ``spec`` over the program of its plan kind (planned once per kind: planning is most of the cost)."""
    policy = parse_policy(spec)
    key = (policy.name, policy.plan_key(0))
    if key not in _PROGRAMS:
        model, kw = DRIVER.model_and_inputs("unet")
        _PROGRAMS[key] = cachec.build_program(model, kw, spec)
    return cachec.CacheRuntime(_PROGRAMS[key], spec, num_steps=T)


def reference(cls, *args) -> tuple[str, tuple]:
    model, _ = DRIVER.model_and_inputs("unet")
    with cls(model, *args) as ref:
        out = DRIVER.trajectory(ref, "unet")
    return ref.schedule, out


def assert_bitwise(ours, theirs):
    """cachec's graph runs the eager model's aten kernels in order, so the same cached tensors give the same bits."""
    (x, outs), (x_ref, outs_ref) = ours, theirs
    for s, (a, b) in enumerate(zip(outs, outs_ref, strict=True)):
        assert torch.equal(a, b), f"step {s}: max |diff| {(a - b).abs().max().item():.3g}"
    assert torch.equal(x, x_ref)


@pytest.mark.parametrize(("spec", "keys"), [
    ("fasterdiffusion:3,schedule=uniform", [s for s in range(T) if s % 3 == 0]),
    # the reference's '50ls' key steps, scaled to 20 steps (the reading docs/methods.md states)
    ("fasterdiffusion", sorted({k * T // 50 for k in KEYS_50LS})),
])
def test_fasterdiffusion_matches_the_hook_reference(spec, keys):
    rt = compiled(spec)
    ours = DRIVER.run(rt, "unet")
    schedule, theirs = reference(FasterDiffusionReference, keys)
    assert rt.stats.schedule == schedule and "R" in schedule
    assert_bitwise(ours, theirs)
    _, plain = DRIVER.plain("unet")  # the comparison could fail: reused steps differ from the plain model
    assert max((a - b).abs().max() for a, b in zip(ours[1], plain, strict=True)) > 1e-3
    # a non-key step runs the decoder only: no conv_in, down or mid block FLOP
    assert rt.program.variant_flops("reuse") < 0.8 * rt.program.planned.none_flops


def test_paper_schedule_is_the_reference_list_at_50_steps():
    assert paper_key_steps(50) == KEYS_50LS
    assert paper_key_steps(100) == [2 * k for k in KEYS_50LS]


def test_every_step_a_key_step_is_none():
    x_plain, outs_plain = DRIVER.plain("unet")
    rt = compiled("fasterdiffusion:1,schedule=uniform")
    x, outs = DRIVER.run(rt, "unet")
    assert rt.stats.schedule == "F" * T and rt.stats.nfe == pytest.approx(T)
    assert all(torch.equal(a, b) for a, b in zip(outs, outs_plain, strict=True)) and torch.equal(x, x_plain)


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


# ------------------------------------------------------------------------------------------------
# VCUT


@pytest.mark.parametrize(("s0", "cfg"), [(6, 1), (1, 1), (6, 0)])
def test_vcut_matches_the_hook_reference(s0, cfg):
    rt = compiled(f"vcut:{s0},cfg={cfg}")
    ours = DRIVER.run(rt, "unet")
    schedule, theirs = reference(VcutReference, s0, bool(cfg))
    assert rt.stats.schedule == schedule == "F" * s0 + "R" * (T - s0)
    assert_bitwise(ours, theirs)
    _, plain = DRIVER.plain("unet")  # the comparison could fail: reused steps differ from the plain model
    assert max((a - b).abs().max() for a, b in zip(ours[1], plain, strict=True)) > 1e-3


def test_vcut_without_the_cfg_mean_is_tgate_with_every_self_attention_computed():
    ours = DRIVER.run(compiled("vcut:6,cfg=0"), "unet")
    tgate = DRIVER.run(compiled("tgate:6,sa=1,warmup=0"), "unet")
    assert_bitwise(ours, tgate)


def test_vcut_warmup_past_s0_caches_the_pair_mean_of_its_last_step():
    """warmup=4 keeps steps 0..3 computing: the reused value is step 3's pair mean, as vcut:4's."""
    ours = DRIVER.run(compiled("vcut:2,warmup=4"), "unet")
    assert_bitwise(ours, DRIVER.run(compiled("vcut:4"), "unet"))


def test_vcut_beyond_the_trajectory_is_none():
    x_plain, outs_plain = DRIVER.plain("unet")
    rt = compiled(f"vcut:{T}")
    x, outs = DRIVER.run(rt, "unet")
    assert rt.stats.schedule == "F" * T
    assert all(torch.equal(a, b) for a, b in zip(outs, outs_plain, strict=True)) and torch.equal(x, x_plain)


@pytest.mark.parametrize(("spec", "match"), [
    ("vcut:0", "s0=0 is out of range"),
    ("vcut:3,cfg=2", "cfg=2 is out of range"),
    ("vcut:3,cfg=-1", "cfg=-1 is out of range"),
])
def test_vcut_bad_parameters_say_what_is_accepted(spec, match):
    with pytest.raises(PolicyError, match=match):
        parse_policy(spec)


def test_vcut_cfg_mean_refuses_an_odd_batch():
    rt = compiled("vcut:2")
    kw = {k: v if k == "timestep" else v[:1] for k, v in DRIVER.model_and_inputs("unet")[1].items()}
    with pytest.raises(PolicyError, match="batch of even size; this call has batch 1.*cfg=0"):
        rt(**kw)


def test_vcut_refuses_a_model_without_cross_attention():
    planner = SimpleNamespace(regions=[SimpleNamespace(kind="attn", segment="b0_attn")],
                              captured=SimpleNamespace(model_class="DiTTransformer2DModel"))
    with pytest.raises(ModelError, match="DiTTransformer2DModel has no cross-attention.*fora"):
        parse_policy("vcut:3").plan(planner)
