"""FasterCache's CFG-Cache as two weightless segments: *record* and *rebuild*.

A batched classifier-free-guidance call stacks ``[uncond; cond]`` along the batch. FasterCache
(Lv et al., 2024, Eq. 9-11) approximates the unconditional output from the conditional one in
the frequency domain: at a step that ran both halves, *record* stores the low- and high-band
differences ``Δ_low = F_low(uncond) − F_low(cond)``, ``Δ_high = F_high(uncond) − F_high(cond)``
(``F``: the centred 2-D FFT over the last two dims, split by a disc of radius ``min(H, W) // 5``
around the centre); at a step that ran only the conditional half, *rebuild* scales the stored
deltas by the step's weights (``Δ ← w·Δ``, kept: the weights compound over consecutive rebuilt
steps) and makes ``uncond = Re(ifft2(ifftshift(Δ_low + F_low(cond) + Δ_high + F_high(cond))))``,
then the whole-batch output ``[uncond; cond]``.

The arithmetic is diffusers' ``FasterCacheDenoiserHook`` and ``_split_low_high_freq``, op for op
in the same order, so the results are the hook's bits: a 5-D (video) output is taken as
``BCFHW`` and made ``(B·F, C, H, W)`` before the FFTs as the hook does for that (its default)
``tensor_format``. Every ``tensor_format`` the hook accepts puts H, W last and only regroups the
leading dims into a batch of 2-D slices, and its ``fftshift`` over *all* dims is undone by the
``ifftshift`` over all dims, so the format changes no value (and only H, W need shifting).

Caches: the deltas are ``complex64`` buffers with the output's shape, both items of a CFG pair
holding their pair's delta in the output's own layout (unshifted), so the batch dimension is
the ordinary ``"B"`` one. The graphs are built with ``make_fx`` in symbolic mode, so they run at
any (even) batch. FFTs and complex values do not lower to ONNX or TensorRT: the method declares
the ``fft`` backend capability (:mod:`cachec.backends`).
"""

from __future__ import annotations

import torch

from ..errors import ModelError
from ..planner import next_value
from ..planner.plan import Plan
from ..planner.segments import example, traced
from ..program import Load, Run, Store, cache_name

fft = torch.fft
SPATIAL = (-2, -1)


def split_low_high(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' ``_split_low_high_freq``: the centred spectrum of ``x`` masked by the low-frequency
    disc and by its complement. The hook shifts over every dim; shifting the leading ones too only
    moves whole H×W slices, which the ifftshift of the rebuild moves back, and changes no value, so
    here only H, W are shifted (a batch-dim shift traced at one batch would be wrong at another)."""
    shifted = fft.fftshift(fft.fft2(x), dim=SPATIAL)
    height, width = x.shape[-2:]
    radius = min(height, width) // 5
    y_grid, x_grid = torch.meshgrid(torch.arange(height, device=x.device), torch.arange(width, device=x.device),
                                    indexing="ij")
    mask = (x_grid - width // 2) ** 2 + (y_grid - height // 2) ** 2 <= radius**2
    low = mask.unsqueeze(0).unsqueeze(0)
    return shifted * low, shifted * ~low


def to_slices(x: torch.Tensor) -> torch.Tensor:
    """The hook's layout for its FFTs: BCHW as is, BCFHW as (B·F, C, H, W)."""
    return x.permute(0, 2, 1, 3, 4).flatten(0, 1) if x.dim() == 5 else x


def from_slices(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Back from :func:`to_slices` to the layout of ``like`` (one half of the output)."""
    return x.unflatten(0, (like.shape[0], -1)).permute(0, 2, 1, 3, 4) if like.dim() == 5 else x


def stored(delta: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """A delta as its cache holds it: unshifted, in the output's layout, for both items of each pair."""
    d = from_slices(fft.ifftshift(delta, dim=SPATIAL), half)
    return torch.cat([d, d], 0)


def loaded(cache: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """A cached delta as the hook holds it (centred, in its FFT layout): the exact inverse of
    :func:`stored` (permutations only, so no bit changes)."""
    return fft.fftshift(to_slices(cache[: half.shape[0]]), dim=SPATIAL)


def record(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """At a step that ran both halves: the two band deltas of ``output = [uncond; cond]``."""
    uncond, cond = output.chunk(2, dim=0)
    low_u, high_u = split_low_high(to_slices(uncond).float())
    low_c, high_c = split_low_high(to_slices(cond).float())
    return stored(low_u - low_c, cond), stored(high_u - high_c, cond)


def rebuild(output, delta_low, delta_high, w_low, w_high):
    """At a step that ran the conditional half only (the uncond half of ``output`` is unset): the
    whole output ``[uncond; cond]`` and the deltas scaled by this step's weights."""
    half = output.shape[0] // 2
    cond = output[half:]
    d_low = loaded(delta_low, cond) * w_low
    d_high = loaded(delta_high, cond) * w_high
    low_c, high_c = split_low_high(to_slices(cond).float())
    freq = (d_low + low_c) + (d_high + high_c)
    uncond = fft.ifft2(fft.ifftshift(freq, dim=SPATIAL)).real
    uncond = from_slices(uncond, cond).to(output.dtype)
    return torch.cat([uncond, cond], 0), stored(d_low, cond), stored(d_high, cond)


# the step inputs of the rebuild: this step's low- and high-band weights (host floats)
WEIGHTS = ("fastercache__w_low", "fastercache__w_high")


def add_cfg_cache(planner, plan: Plan, tag: str, policy: str) -> None:
    """Add FasterCache's CFG-Cache variants to ``plan``: ``cfg_record`` stores the band deltas of a
    step's ``[uncond; cond]`` output, ``cfg_rebuild`` makes the unconditional half from the
    conditional one and the deltas; the controller runs them after the step's variant."""
    out = planner.captured.output_name
    ex = plan.examples
    val = ex[out]
    if val.dim() not in (4, 5):
        raise ModelError(f"{policy}: CFG-Cache rebuilds the unconditional output from its 2-D spectrum, so it "
                         f"needs an image output (B, C, H, W) or a video output (B, C, F, H, W); "
                         f"{planner.captured.model_class} returns rank {val.dim()} ({tuple(val.shape)})")
    low, high = cache_name(tag, "low"), cache_name(tag, "high")
    w_low, w_high = WEIGHTS
    ex[low] = ex[high] = ex[next_value(low)] = ex[next_value(high)] = \
        torch.empty_like(val, dtype=torch.complex64)  # a fake tensor: keeps the symbolic batch
    for w in (w_low, w_high):
        ex[w] = torch.empty((), dtype=torch.float32)  # the hook's weights are Python floats
        plan.add_step_input(w)
    x = example(val)
    d = example(val, torch.complex64)
    w = torch.ones((), dtype=torch.float32)
    rec = planner.add_segment(plan, f"{tag}_record", traced(
        record, [(out, x)], [next_value(low), next_value(high)], "CfgRecord"), "cache")
    reb = planner.add_segment(plan, f"{tag}_rebuild", traced(
        rebuild, [(out, x), (low, d), (high, d), (w_low, w), (w_high, w)],
        [out, next_value(low), next_value(high)], "CfgRebuild"), "cache")
    stores = [Store(next_value(low), low), Store(next_value(high), high)]
    plan.variants["cfg_record"] = [Run(rec), *stores]
    plan.variants["cfg_rebuild"] = [Load(low, low), Load(high, high), Run(reb), *stores]
