"""FasterCache's CFG-Cache (``fastercache:N,cfg=n``) against diffusers' own hooks, over whole trajectories.

The reference is ``apply_faster_cache`` with ``is_guidance_distilled=False`` (the denoiser hook that
runs the conditional half alone and rebuilds the unconditional output, plus the block hooks that
then extrapolate self-attention on those half-batch steps), on a fresh copy of the same model.
Both are driven by the shared driver (``tests/trajectories.py``: 20 steps, timesteps 999 → 0) on a
batch of 2 read as a CFG pair ``[uncond; cond]`` (its two items have different prompts). Compared:
which steps ran the conditional half only (the unconditional item's ``C`` letters), every step's
output, the NFE (a rebuilt step costs half a batch), the degenerate settings, the errors, and the
backends that cannot lower FFTs.
"""

from __future__ import annotations

import pytest
import torch
from reference_attention_skip import TimestepFeed
from small_models import make
from trajectories import Driver

import cachec
from cachec.backends import artifact_backend
from cachec.errors import ModelError, PolicyError
from cachec.policy import parse_policy

T = 20
ATOL = RTOL = 1e-4
DRIVER = Driver(T, 2)
# timesteps 999, 946, ..., 0: steps 7..19 lie inside the default CFG window (-1, 641); steps 10 and
# 15 are multiples of cfg=5, so they run both halves; the others rebuild the unconditional half
REBUILT = [7, 8, 9, 11, 12, 13, 14, 16, 17, 18, 19]

pytestmark = pytest.mark.usefixtures("one_thread")


def diffusers_fastercache_cfg(model, N: int, cfg: int, tensor_format: str):
    """diffusers' FasterCache with a CFG batch, its windows and alphas at their defaults (cachec's too)."""
    from diffusers.hooks import FasterCacheConfig, apply_faster_cache

    feed = TimestepFeed(model)
    config = FasterCacheConfig(
        spatial_attention_block_skip_range=N, unconditional_batch_skip_range=cfg, is_guidance_distilled=False,
        tensor_format=tensor_format, current_timestep_callback=feed.timestep,
        attention_weight_callback=lambda _: 0.5)
    apply_faster_cache(model, config)
    return feed


def run(short: str, spec: str, backend: str = "eager"):
    model, kw = DRIVER.model_and_inputs(short)
    rt = cachec.compile(model, kw, spec, num_steps=T, backend=backend)
    return rt, DRIVER.run(rt, short)


def rebuilt_steps(rt) -> list[int]:
    uncond, cond = rt.stats.item_schedules
    assert "C" not in cond
    return [s for s, c in enumerate(uncond) if c == "C"]


def test_cfg_cache_alone_is_bit_identical_to_diffusers():
    """N=1 (attention always computed): only CFG-Cache differs from the plain model, and its FFT
    arithmetic is the hook's, op for op, on the same conditional-half outputs: the same bits."""
    rt, ours = run("pixart", "fastercache:1,cfg=5")
    theirs = DRIVER.trajectory(diffusers_fastercache_cfg(make("pixart"), 1, 5, "BCHW"), "pixart")
    assert rebuilt_steps(rt) == REBUILT
    assert rt.stats.item_schedules[1] == "F" * T
    assert rt.stats.schedule == "".join("M" if s in REBUILT else "F" for s in range(T))
    for s, (a, b) in enumerate(zip(ours[1], theirs[1], strict=True)):
        assert torch.equal(a, b), f"step {s}: max |diff| {(a - b).abs().max():.3g}"
    assert torch.equal(ours[0], theirs[0])
    # a rebuilt step runs the model on half the batch (the FFTs are not counted, as no element-wise op is);
    # every step also shifts the attention history, one product per stream, counted as any matmul
    full = rt.program.variant_flops("full") / rt.program.planned.none_flops
    assert 1 < full < 1.05 and rt.stats.nfe == pytest.approx((T - len(REBUILT) / 2) * full)
    _, plain = DRIVER.plain("pixart")
    assert max((a - b).abs().max() for a, b in zip(ours[1], plain, strict=True)) > 10 * ATOL  # not a no-op


@pytest.mark.parametrize("short,fmt", [("pixart", "BCHW"), ("wan", "BCFHW")])  # wan: a video model, 5-D latents
def test_cfg_cache_with_attention_reuse_matches_diffusers(short, fmt):
    rt, ours = run(short, "fastercache:2,cfg=5")
    theirs = DRIVER.trajectory(diffusers_fastercache_cfg(make(short), 2, 5, fmt), short)
    assert rebuilt_steps(rt) == REBUILT
    # with a CFG batch the hook extrapolates attention only on the half-batch steps, there when the
    # step is odd (window (-1, 681) holds every rebuilt step)
    assert rt.stats.item_schedules[1] == "".join("R" if s in REBUILT and s % 2 else "F" for s in range(T))
    # not bit for bit: the extrapolation is (1+w)·last − w·prev here, last + (last − prev)·w in the hook
    for s, (a, b) in enumerate(zip(ours[1], theirs[1], strict=True)):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=lambda m, s=s: f"step {s}: {m}")
    torch.testing.assert_close(ours[0], theirs[0], rtol=RTOL, atol=ATOL)
    # NFE: a step that ran both halves is 1; a rebuilt one is half a batch of its variant
    none, flops = rt.program.planned.none_flops, rt.program.variant_flops
    step_nfe = [0.5 * flops("reuse" if s % 2 else "full") / none if s in REBUILT else flops("full") / none
                for s in range(T)]
    assert rt.stats.nfe == pytest.approx(sum(step_nfe))
    assert rt.stats.nfe < T - len(REBUILT) / 2  # the extrapolated attention saves more on top


def test_cfg_1_is_none():
    """cfg=1 runs both halves at every step, and with a CFG batch attention is never skipped then."""
    rt, (x, _) = run("pixart", "fastercache:2,cfg=1")
    x_plain, _ = DRIVER.plain("pixart")
    assert rt.stats.schedule == "F" * T
    torch.testing.assert_close(x, x_plain, rtol=RTOL, atol=ATOL)


def test_cfg_0_keeps_the_attention_only_program():
    """cfg=0 (the default) plans and runs what fastercache did before CFG-Cache: no FFT variant, one
    whole-batch decision per step, the attention window applied to the whole batch (the comparison
    with diffusers' hook for that case is test_deepcache_tgate_pab.py's)."""
    assert parse_policy("fastercache:2,cfg=0").spec == "fastercache:2"
    rt, _ = run("pixart", "fastercache:2,hi=900")
    assert set(rt.program.variants) == {"full", "reuse"}
    assert rt.stats.schedule == "FF" + "FR" * 9
    assert "fft" not in parse_policy("fastercache:2").needs
    artifact_backend("onnxruntime").check_policy(parse_policy("fastercache:2"))  # exportable as before


def test_cfg_cache_pieces_equal_the_hooks_functions():
    """record / rebuild against the hook's ``_split_low_high_freq`` and its rebuild arithmetic, on two
    CFG pairs at once, for image and video outputs in each ``tensor_format`` the hook accepts."""
    from diffusers.hooks.faster_cache import _split_low_high_freq

    from cachec.methods.cfg_cache import rebuild, record

    def slices(x, fmt):
        if fmt == "BCFHW":
            x = x.permute(0, 2, 1, 3, 4)
        return x.flatten(0, 1) if fmt != "BCHW" else x

    torch.manual_seed(0)
    for shape, fmt in [((4, 3, 10, 12), "BCHW"), ((4, 3, 5, 8, 10), "BCFHW"), ((4, 3, 5, 8, 10), "BFCHW")]:
        prev, cur = torch.randn(shape), torch.randn(shape)
        lu, hu = _split_low_high_freq(slices(prev[:2], fmt))
        lc, hc = _split_low_high_freq(slices(prev[2:], fmt))
        dl, dh = (lu - lc) * 1.1, (hu - hc) * 1.0
        l2, h2 = _split_low_high_freq(slices(cur[2:], fmt))
        expected = torch.fft.ifft2(torch.fft.ifftshift((dl + l2) + (dh + h2))).real
        ours, _, _ = rebuild(cur, *record(prev), torch.tensor(1.1), torch.tensor(1.0))
        # cachec reads a 5-D output as BCFHW; the hook's other format regroups the same H×W slices
        got = slices(ours[:2], fmt if len(shape) == 4 else "BCFHW")
        want = expected if fmt != "BFCHW" else slices(expected.unflatten(0, (2, -1)), "BCFHW")
        assert torch.equal(got, want), fmt
        assert torch.equal(ours[2:], cur[2:])  # the conditional half is untouched


def test_cfg_cache_errors():
    with pytest.raises(PolicyError, match="cfg_lo < cfg_hi"):
        parse_policy("fastercache:2,cfg=5,cfg_lo=700,cfg_hi=600")
    with pytest.raises(PolicyError, match="high_lo < high_hi"):
        parse_policy("fastercache:2,cfg=5,high_lo=300,high_hi=300")
    with pytest.raises(PolicyError, match="cfg=-1 is out of range"):
        parse_policy("fastercache:2,cfg=-1")
    with pytest.raises(PolicyError, match="alpha_low=-0.5 is out of range"):
        parse_policy("fastercache:2,cfg=5,alpha_low=-0.5")
    # a batch that is not [uncond; cond]
    model, kw = DRIVER.model_and_inputs("pixart")
    rt = cachec.compile(model, kw, "fastercache:2,cfg=5", num_steps=T)
    one = {k: v[:1] if isinstance(v, torch.Tensor) and v.dim() else v for k, v in kw.items()}
    with pytest.raises(PolicyError, match="even size; this call has batch 1"):
        rt(**one)


def test_loops_without_guidance_refuse_cfg_cache():
    """cachec run / bench / serve batch separate samples, which CFG-Cache would read as CFG pairs."""
    from cachec.errors import RequestError
    from cachec.models import example_inputs, resolve
    from cachec.sampling import sample
    from cachec.serve_worker import check_policy

    bundle = resolve("builtin:tiny-dit")
    rt = cachec.compile(bundle.model, example_inputs(bundle.model, 2, 0), "fastercache:2,cfg=5", num_steps=4)
    with pytest.raises(PolicyError, match=r"pairs \[uncond; cond\], and this sampling loop runs without guidance"):
        sample(rt, bundle, 4, 0, 2)
    with pytest.raises(RequestError, match="the server batches separate requests without guidance; use cfg=0"):
        check_policy("fastercache:2,cfg=5", "fastercache:2,cfg=5", 2, 4)
    assert check_policy("fastercache:2", "fastercache:2", 2, 4).spec == "fastercache:2"


def test_cfg_cache_needs_an_image_or_video_output():
    model, kw = DRIVER.model_and_inputs("flux")  # tokens out: (B, L, C)
    with pytest.raises(ModelError, match=r"needs an image output \(B, C, H, W\) or a video output"):
        cachec.compile(model, kw, "fastercache:2,cfg=5", num_steps=T)


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt", "aotinductor"])
def test_backends_without_ffts_refuse_cfg_cache(backend):
    with pytest.raises(PolicyError, match=f"complex FFTs on the halves of the batch, which the {backend} backend "
                                          "does not lower; use --backend eager or inductor"):
        artifact_backend(backend).check_policy(parse_policy("fastercache:2,cfg=5"))


@pytest.mark.slow  # Inductor compiles each variant at the whole and at the half batch
def test_cfg_cache_on_inductor_matches_eager():
    _, (x, outs) = run("pixart", "fastercache:2,cfg=5")
    rt, (x_ind, outs_ind) = run("pixart", "fastercache:2,cfg=5", backend="inductor")
    assert rebuilt_steps(rt) == REBUILT
    for a, b in zip(outs, outs_ind, strict=True):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)
