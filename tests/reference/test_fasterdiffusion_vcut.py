"""The U-Net methods FasterDiffusion (encoder propagation) and VCUT (cross-attention cut) against
independent hook references, over whole trajectories, sharing one capture of the small U-Net.

The references wrap modules of the original small ``UNet2DConditionModel``:
``tests/reference_fasterdiffusion.py`` its encoder (``conv_in``, down blocks, mid block) as the paper's
reference forward skips them, ``tests/reference_vcut.py`` its cross-attention modules. The driver is
the shared one (``tests/trajectories.py``: 20 steps, batch 2 — for VCUT's ``cfg=1`` one
``[uncond; cond]`` pair — fp32). Per setting: the schedule, every step's output bit for bit, the final
latent; the degenerate settings equal ``none`` (or T-GATE). The rules without a model (key steps,
stages, errors) are in tests/unit/test_unet_methods.py.
"""

from __future__ import annotations

import pytest
import torch
from reference_fasterdiffusion import KEYS_50LS, FasterDiffusionReference
from reference_vcut import VcutReference
from trajectories import Driver

import cachec
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


def test_every_step_a_key_step_is_none():
    x_plain, outs_plain = DRIVER.plain("unet")
    rt = compiled("fasterdiffusion:1,schedule=uniform")
    x, outs = DRIVER.run(rt, "unet")
    assert rt.stats.schedule == "F" * T and rt.stats.nfe == pytest.approx(T)
    assert all(torch.equal(a, b) for a, b in zip(outs, outs_plain, strict=True)) and torch.equal(x, x_plain)


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
    # the pair mean matters here (the two items have different conditioning): cfg=1 is not T-GATE
    with_mean = DRIVER.run(compiled("vcut:6,cfg=1"), "unet")
    assert (with_mean[0] - ours[0]).abs().max() > 1e-3


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
