"""FreqCa's frequency split of a token stream, as a weightless segment graph.

FreqCa forecasts the low band of the cumulative residual feature by reuse and its high band by a
Hermite series. Both are linear in the forecast state, and the band split is linear too, so with
``G`` the high-order part of the Hermite series (everything but ``D_0``)::

    R̂ = low(D_0) + high(D_0 + G) = D_0 + high(G) = D_0 + G − low(G)

and the only new graph piece is ``low(·)``: an orthonormal DCT-II over the tokens, a mask keeping
the frequencies whose radius is at most ``cutoff`` times the largest, and the inverse DCT. Tokens
form a square grid (DiT, FLUX at square sizes) when their count is a square: then the DCT is 2-D
over that grid (FreqCa on FLUX); otherwise it is 1-D over the token sequence (FreqCa on Qwen).

Why the DCT is built from ``arange``/``cos`` inside the graph instead of stored matrices: the
segment stays weightless (no constant a backend must ship) and exports to ONNX as a few matmuls.
"""

from __future__ import annotations

import math

import torch


def token_grid(tokens: int) -> tuple[int, int]:
    """``(h, w)`` of the DCT: a square grid when ``tokens`` is a square, else ``(1, tokens)``."""
    side = math.isqrt(tokens)
    return (side, side) if side * side == tokens else (1, tokens)


def dct_matrix(n: int, like: torch.Tensor) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``C[k, j] = s_k·cos(π(j + ½)k/n)`` (``C⁻¹ = Cᵀ``)."""
    k = torch.arange(n, dtype=torch.float32, device=like.device).unsqueeze(1)
    j = torch.arange(n, dtype=torch.float32, device=like.device).unsqueeze(0)
    scale = torch.where(k == 0, math.sqrt(1.0 / n), math.sqrt(2.0 / n))
    return (scale * torch.cos(math.pi * (j + 0.5) * k / n)).to(like.dtype)


def low_mask(h: int, w: int, cutoff: float, like: torch.Tensor) -> torch.Tensor:
    """1 where the radius ``√((k_h/h)² + (k_w/w)²)`` is at most ``cutoff`` times its largest value."""
    kh = torch.arange(h, dtype=torch.float32, device=like.device).unsqueeze(1) / h
    kw = torch.arange(w, dtype=torch.float32, device=like.device).unsqueeze(0) / w
    radius = torch.sqrt(kh * kh + kw * kw)
    largest = math.sqrt(((h - 1) / h) ** 2 + ((w - 1) / w) ** 2)
    return (radius <= cutoff * largest + 1e-9).to(like.dtype)


def low_pass(x: torch.Tensor, cutoff: float) -> torch.Tensor:
    """The low band of ``x`` (``[batch, tokens, channels]``) over its tokens."""
    b, n, c = x.shape
    h, w = token_grid(n)
    ch, cw = dct_matrix(h, x), dct_matrix(w, x)
    grid = x.reshape(b, h, w, c)
    freq = torch.einsum("kh,bhwc->bkwc", ch, grid)
    freq = torch.einsum("lw,bkwc->bklc", cw, freq)
    freq = freq * low_mask(h, w, cutoff, x).unsqueeze(-1)
    back = torch.einsum("kh,bkwc->bhwc", ch, freq)
    back = torch.einsum("lw,bhlc->bhwc", cw, back)
    return back.reshape(b, n, c)


def band_forecast(cutoff: float):
    """``(G, D_0) -> D_0 + G − low(G)``: the forecast with the low band of the last value kept."""
    def fn(high_terms: torch.Tensor, last: torch.Tensor) -> tuple[torch.Tensor]:
        return (last + high_terms - low_pass(high_terms, cutoff),)

    return fn


def splittable(shape) -> bool:
    """Whether a stream of this shape is a token stream the split reads: ``[batch, tokens, channels]``."""
    return len(shape) == 3
