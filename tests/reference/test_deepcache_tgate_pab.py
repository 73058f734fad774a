"""DeepCache, T-GATE and PAB against independent references, over whole trajectories.

DeepCache and T-GATE run against hook implementations written from their reference code
(``tests/reference_attention_skip.py``); PAB against diffusers' own ``PyramidAttentionBroadcast``
hook on the same model. The driver is the shared one (``tests/trajectories.py``: 20 steps, batch 2,
fp32, timesteps 999 → 0). Per policy: the schedule, every step's output, the final latent; the
degenerate settings equal ``none``; bad parameters raise errors that say what is accepted.
"""

from __future__ import annotations

import pytest
import torch
from reference_attention_skip import DeepCacheReference, TGateReference, TimestepFeed
from trajectories import Driver

import cachec
from cachec.errors import ModelError, PolicyError
from cachec.methods.deepcache import pow_full_steps
from cachec.policy import parse_policy

T = 20
ATOL = RTOL = 1e-4
DRIVER = Driver(T, 2)

pytestmark = pytest.mark.usefixtures("one_thread")


def compiled(short: str, spec: str) -> cachec.CacheRuntime:
    model, kw = DRIVER.model_and_inputs(short)
    return cachec.compile(model, kw, spec, num_steps=T)


def assert_trajectories_match(ours, ref, far_from_plain: str | None = None, bitwise: bool = False):
    """Every step's output (and the final latent) equal within RTOL/ATOL, or bit for bit if ``bitwise``:
    cachec's exported graph runs the same aten kernels in the same order as the eager model, so a
    reference that substitutes the same cached tensors gets the same bits in fp32."""
    (x, outs), (x_ref, outs_ref) = ours, ref
    if bitwise:
        assert all(torch.equal(a, b) for a, b in zip(outs, outs_ref, strict=True))
    for s, (a, b) in enumerate(zip(outs, outs_ref, strict=True)):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=lambda m, s=s: f"step {s}: {m}")
    torch.testing.assert_close(x, x_ref, rtol=RTOL, atol=ATOL)
    if far_from_plain:  # the comparison could fail: some step's output is not the plain model's
        _, outs_plain = DRIVER.plain(far_from_plain)
        assert max((a - b).abs().max() for a, b in zip(outs, outs_plain, strict=True)) > 10 * ATOL


# ------------------------------------------------------------------------------------------------
# DeepCache


@pytest.mark.parametrize("branch", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_deepcache_matches_the_hook_reference(branch):
    rt = compiled("unet", f"deepcache:3,branch={branch}")
    ours = DRIVER.run(rt, "unet")
    model, _ = DRIVER.model_and_inputs("unet")
    with DeepCacheReference(model, N=3, k=branch) as ref:
        theirs = DRIVER.trajectory(ref, "unet")
    assert rt.stats.schedule == ref.schedule == "FRR" * 6 + "FR"
    assert_trajectories_match(ours, theirs, far_from_plain="unet", bitwise=True)
    # a cached step runs only the shallow path: fewer FLOPs the shallower the branch
    assert rt.program.variant_flops("reuse") < 0.9 * rt.full_step_flops


@pytest.mark.slow  # four compiles
def test_deepcache_shallower_branches_cost_less():
    costs = [compiled("unet", f"deepcache:2,branch={k}").program for k in range(4)]
    share = [p.variant_flops("reuse") / p.planned.none_flops for p in costs]
    assert share == sorted(share) and share[0] < 0.5 and share[-1] < 1.0


def test_deepcache_interval_1_is_none():
    x_plain, outs_plain = DRIVER.plain("unet")
    rt = compiled("unet", "deepcache:1")
    x, outs = DRIVER.run(rt, "unet")
    assert rt.stats.schedule == "F" * T and rt.stats.nfe == pytest.approx(T)
    for a, b in zip(outs, outs_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)


def test_deepcache_pow_schedule_is_the_reference_sample_from_quad():
    # by hand: linspace(0, 10**(1/1.2), 5) ** 1.2 = 0, 1.89, 4.35, 7.08, 10 -> int -> drop the last
    assert pow_full_steps(10, 4, 1.2) == [0, 1, 4, 7]
    steps = pow_full_steps(50, 17, 1.2)
    assert len(steps) == 17 and steps[0] == 0 and steps == sorted(set(steps))
    gaps = [b - a for a, b in zip(steps, steps[1:], strict=False)]
    assert gaps[0] < gaps[-1]  # denser early
    ctl = parse_policy("deepcache:3,schedule=pow").controller(10)
    assert "".join("F" if ctl.decide(s) else "R" for s in range(10)) == "FFRRFRRFRR"  # ceil(10/3) = 4 full


def test_deepcache_errors_say_what_is_accepted():
    with pytest.raises(PolicyError, match="N=0 is out of range"):
        parse_policy("deepcache:0")
    with pytest.raises(PolicyError, match="accepted: uniform, pow"):
        parse_policy("deepcache:3,schedule=center")
    with pytest.raises(ModelError, match="branch=9 is out of range.*accepted: 0 .. 3"):
        compiled("unet", "deepcache:3,branch=9")
    with pytest.raises(ModelError, match="no U-Net skip connections.*fora"):
        compiled("dit", "deepcache:3")


# ------------------------------------------------------------------------------------------------
# T-GATE


@pytest.mark.parametrize("short", ["unet", "pixart"])
def test_tgate_matches_the_hook_reference(short):
    rt = compiled(short, "tgate:8,sa=3")
    ours = DRIVER.run(rt, short)
    model, _ = DRIVER.model_and_inputs(short)
    with TGateReference(model, gate=8, sa_interval=3) as ref:
        theirs = DRIVER.trajectory(ref, short)
    # warm-up steps 0..2 and step 3 (3 % 3 == 0) compute; 4, 5 reuse self-attention; 6 computes;
    # the gate step 7 computes; from 8 on cross-attention is frozen
    assert rt.stats.schedule == ref.schedule == "FFFFRRFF" + "R" * 12
    assert_trajectories_match(ours, theirs, far_from_plain=short, bitwise=True)


@pytest.mark.slow  # one more U-Net compile; the fast subset keeps one U-Net test per method
def test_tgate_after_gate_self_attention_interval():
    rt = compiled("unet", "tgate:6,sa=2,sa_after=2")
    ours = DRIVER.run(rt, "unet")
    model, _ = DRIVER.model_and_inputs("unet")
    with TGateReference(model, gate=6, sa_interval=2, ca_interval=2) as ref:
        theirs = DRIVER.trajectory(ref, "unet")
    assert rt.stats.schedule == ref.schedule
    assert_trajectories_match(ours, theirs, far_from_plain="unet", bitwise=True)


@pytest.mark.slow  # one more U-Net compile; the fast subset keeps one U-Net test per method
def test_tgate_degenerate_is_none():
    """sa=1 and a gate beyond the trajectory: nothing is ever reused."""
    x_plain, outs_plain = DRIVER.plain("unet")
    rt = compiled("unet", f"tgate:{T + 1},sa=1")
    x, outs = DRIVER.run(rt, "unet")
    assert rt.stats.schedule == "F" * T
    torch.testing.assert_close(x, x_plain, rtol=RTOL, atol=ATOL)


def test_tgate_errors():
    with pytest.raises(PolicyError, match="G=0 is out of range"):
        parse_policy("tgate:0")
    with pytest.raises(PolicyError, match="sa=0 is out of range"):
        parse_policy("tgate:10,sa=0")


# ------------------------------------------------------------------------------------------------
# PAB against diffusers' hook


def diffusers_pab(model, S: int, C: int, window: tuple[int, int]):
    from diffusers.hooks import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast

    feed = TimestepFeed(model)
    config = PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=S, cross_attention_block_skip_range=C,
        spatial_attention_timestep_skip_range=window, cross_attention_timestep_skip_range=window,
        current_timestep_callback=feed.timestep)
    apply_pyramid_attention_broadcast(model, config)
    return feed


@pytest.mark.parametrize("short", ["unet", "pixart", "wan"])  # wan: a video model, 5-D latents
def test_pab_matches_diffusers_hook(short):
    rt = compiled(short, "pab:3,1,4,lo=50,hi=950")
    ours = DRIVER.run(rt, short)
    from small_models import make  # a fresh model: diffusers' hook stays on it

    _, kw = DRIVER.model_and_inputs(short)
    theirs = DRIVER.trajectory(diffusers_pab(make(short), 3, 4, (50, 950)), short)
    # timesteps 999, 946, ... 0: steps 1..18 lie strictly inside (50, 950)
    inside = [s for s, t in enumerate(DRIVER.timesteps(short, kw)) if 50 < float(t.reshape(-1)[0]) < 950]
    expected = "".join("R" if s in inside and (s % 3 or s % 4) else "F" for s in range(T))
    assert rt.stats.schedule == expected
    assert_trajectories_match(ours, theirs, far_from_plain=short, bitwise=True)


@pytest.mark.slow  # one more U-Net compile; the fast subset keeps one U-Net test per method
def test_pab_ranges_1_are_none():
    x_plain, _ = DRIVER.plain("unet")
    rt = compiled("unet", "pab:1,1,1,lo=0,hi=1000")
    x, _ = DRIVER.run(rt, "unet")
    assert rt.stats.schedule == "F" * T
    torch.testing.assert_close(x, x_plain, rtol=RTOL, atol=ATOL)


def test_pab_errors():
    with pytest.raises(PolicyError, match="lo < hi"):
        parse_policy("pab:2,lo=900,hi=100")
    with pytest.raises(PolicyError, match="C=0 is out of range"):
        parse_policy("pab:2,4,0")


# ------------------------------------------------------------------------------------------------
# FasterCache (attention part) against diffusers' hook, without a CFG batch


def diffusers_fastercache(model, N: int, window: tuple[int, int], w: float):
    from diffusers.hooks import FasterCacheConfig, apply_faster_cache

    feed = TimestepFeed(model)
    config = FasterCacheConfig(
        spatial_attention_block_skip_range=N, spatial_attention_timestep_skip_range=window,
        is_guidance_distilled=True, tensor_format="BCHW", current_timestep_callback=feed.timestep,
        attention_weight_callback=lambda _: w)
    apply_faster_cache(model, config)
    return feed


@pytest.mark.parametrize("short", ["pixart", "dit", "wan"])  # wan: a video model, 5-D latents
def test_fastercache_matches_diffusers_hook(short):
    rt = compiled(short, "fastercache:2,w=0.5,lo=-1,hi=900")
    ours = DRIVER.run(rt, short)
    from small_models import make

    theirs = DRIVER.trajectory(diffusers_fastercache(make(short), 2, (-1, 900), 0.5), short)
    # steps 0 (forced) and 1 (t=946, outside the window) compute; then every odd step extrapolates
    assert rt.stats.schedule == "FF" + "FR" * 9
    # not bit for bit: cachec's mix computes (1+w)·last − w·prev, the hook last + (last − prev)·w
    assert_trajectories_match(ours, theirs, far_from_plain=short)


def test_fastercache_extrapolation_by_hand():
    from cachec.methods.fastercache import Extrapolate

    e = Extrapolate(0.5)
    last, prev, a = 2.0, 1.0, 5.0
    first, later = e.update(0, 1), e.update(1, 1)
    assert [r[0] * a + r[1] * last + r[2] * prev for r in first] == [5.0, 5.0]  # both slots <- A
    assert [r[0] * a + r[1] * last + r[2] * prev for r in later] == [5.0, 2.0]  # last <- A, prev <- last
    est, new_last, new_prev = ([r[0] * last + r[1] * prev for r in e.predict(1, 1)])
    assert (est, new_last, new_prev) == (2.5, 2.5, 2.0)  # 2 + 0.5 * (2 - 1)


def test_fastercache_interval_1_is_none():
    x_plain, _ = DRIVER.plain("pixart")
    rt = compiled("pixart", "fastercache:1,lo=-1,hi=1000")
    x, _ = DRIVER.run(rt, "pixart")
    assert rt.stats.schedule == "F" * T
    torch.testing.assert_close(x, x_plain, rtol=RTOL, atol=ATOL)


def test_fastercache_errors():
    with pytest.raises(PolicyError, match="lo < hi"):
        parse_policy("fastercache:2,lo=700,hi=600")
    with pytest.raises(PolicyError, match="w=-1 is out of range"):
        parse_policy("fastercache:2,w=-1")
