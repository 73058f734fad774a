"""Fidelity metrics against the uncached output of the same seed: PSNR and SSIM.

Images are compared in [0, 1]. Pixel-space models map [-1, 1] to [0, 1]; latent-space models
(random-weight architectures, no VAE here) are mapped with the *reference's* min and max, so the
numbers are relative to the reference's range. SSIM is Wang et al.'s, with an 11×11 Gaussian
window (σ = 1.5) shrunk to the image size for small images, computed per channel and averaged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0) -> float:
    mse = torch.mean((x.double() - ref.double()) ** 2).item()
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def _gaussian(size: int, sigma: float) -> torch.Tensor:
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0) -> float:
    """Mean SSIM of (N, C, H, W) images in [0, data_range]."""
    x, ref = x.double(), ref.double()
    if x.dim() == 3:
        x, ref = x[None], ref[None]
    size = min(11, x.shape[-1], x.shape[-2])
    size = size if size % 2 else size - 1
    c = x.shape[1]
    w = _gaussian(size, 1.5).to(x)[None, None].repeat(c, 1, 1, 1)

    def filt(t):
        return F.conv2d(t, w, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = filt(x), filt(ref)
    sxx = filt(x * x) - mu_x**2
    syy = filt(ref * ref) - mu_y**2
    sxy = filt(x * ref) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.mean().item()


def to_unit(x: torch.Tensor, pixel_space: bool, ref: torch.Tensor | None = None) -> torch.Tensor:
    """Map samples to [0, 1] images (N, C, H, W) for metrics and PNGs."""
    x = x.detach().float()
    if x.dim() == 5:  # video latents (N, C, F, H, W): first frame
        x = x[:, :, 0]
    if x.dim() == 3:  # packed tokens (N, L, D): unpack to a square grid of D channels
        n, length, d = x.shape
        side = int(math.isqrt(length))
        x = x[:, : side * side].transpose(1, 2).reshape(n, d, side, side)
        if ref is not None and ref.dim() == 3:
            ref = ref[:, : side * side].transpose(1, 2).reshape(n, d, side, side)
    if pixel_space:
        return ((x + 1) / 2).clamp(0, 1)
    r = x if ref is None else (ref[:, :, 0] if ref.dim() == 5 else ref).float()
    lo, hi = r.min(), r.max()
    return ((x - lo) / (hi - lo + 1e-12)).clamp(0, 1)
