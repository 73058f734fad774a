"""Procedural "coloured shapes" images: the data the bundled ``builtin:tiny-dit`` is trained on.

cachec ships a small trained diffusion transformer so that its caching can be
exercised and measured on a denoiser whose features really evolve from step to
step the way a trained model's do (an untrained network's do not). Nothing may be
downloaded, so the training data is generated here, deterministically from a
seed, with numpy only.

Only the tiny-DiT tools (``train_tiny_dit.py``, ``eval_tiny_dit.py``) use it, so it lives beside
them rather than in the installed package.

Every image is one anti-aliased shape on a soft, smoothly shaded background.
A class is a (shape, colour family) pair: five shapes, each in a warm (red to
orange) or a cool (cyan to blue) colour, so neither the shape alone nor the colour
alone identifies the class. Position, size, hue, saturation, brightness and the
background vary per image, which keeps the distribution non-trivial while a small
model can still learn it.
"""

import numpy as np
import torch

SHAPES = ("circle", "square", "triangle", "ring", "cross")
COLOURS = ("red", "blue")
CLASS_NAMES = tuple(f"{colour}_{shape}" for shape in SHAPES for colour in COLOURS)
NUM_CLASSES = len(CLASS_NAMES)

# Hue ranges (fraction of the colour wheel) of the two colour families; "red"
# wraps around 0 to reach orange, "blue" spans cyan to blue.
_HUE_RANGES = {"red": (-0.04, 0.09), "blue": (0.52, 0.66)}


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB for arrays of shape (n,); returns (n, 3) in [0, 1]."""
    h = np.mod(h, 1.0)
    k = np.mod(np.array([5.0, 3.0, 1.0])[None, :] + h[:, None] * 6.0, 6.0)
    return v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance (pixels, negative inside) from pixel offsets (dx, dy) to a shape of radius r.

    The distances are exact near the edges, which is all the one-pixel
    anti-aliasing in :func:`make_shapes` needs.
    """
    if shape == "circle":
        return np.hypot(dx, dy) - r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - 0.85 * r
    if shape == "triangle":
        # Apex up (image y grows downwards): apex at -r, base at +0.8 r, half-width r.
        base = dy - 0.8 * r
        norm = np.hypot(1.8, 1.0)
        side = (1.8 * np.abs(dx) - (dy + r)) / norm
        return np.maximum(base, side)
    if shape == "ring":
        return np.abs(np.hypot(dx, dy) - 0.8 * r) - (0.18 * r + 0.45)
    if shape == "cross":
        arm = 0.28 * r + 0.2
        vertical = np.maximum(np.abs(dx) - arm, np.abs(dy) - r)
        horizontal = np.maximum(np.abs(dx) - r, np.abs(dy) - arm)
        return np.minimum(vertical, horizontal)
    raise ValueError(f"unknown shape {shape!r}")


def make_shapes(n: int, seed: int, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate ``n`` labelled images, identical for identical ``(n, seed, size)``.

    Returns ``(images, labels)``: images float32 of shape (n, 3, size, size) in
    [-1, 1] (the range a pixel-space diffusion model is trained in) and int64
    labels in [0, NUM_CLASSES), drawn uniformly. ``CLASS_NAMES[label]`` names
    the class.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, size=n)
    scale = size / 16.0

    # Shape geometry: radius, and a centre that keeps the shape inside the image.
    radius = rng.uniform(3.0, 5.5, size=n) * scale
    margin = radius + 0.5 * scale
    cx = margin + rng.uniform(0.0, 1.0, size=n) * (size - 1 - 2 * margin)
    cy = margin + rng.uniform(0.0, 1.0, size=n) * (size - 1 - 2 * margin)

    # Foreground colour: hue from the class's colour family, jittered saturation/value.
    colour_of = np.array([COLOURS.index(name.split("_")[0]) for name in CLASS_NAMES])
    lo = np.array([_HUE_RANGES[c][0] for c in COLOURS])[colour_of[labels]]
    hi = np.array([_HUE_RANGES[c][1] for c in COLOURS])[colour_of[labels]]
    hue = lo + rng.uniform(0.0, 1.0, size=n) * (hi - lo)
    fg = _hsv_to_rgb(hue, rng.uniform(0.6, 0.95, size=n), rng.uniform(0.75, 1.0, size=n))

    # Background: a dark, desaturated base colour with a linear gradient of random direction.
    bg_base = _hsv_to_rgb(rng.uniform(0.0, 1.0, size=n), rng.uniform(0.0, 0.35, size=n), rng.uniform(0.1, 0.35, size=n))
    angle = rng.uniform(0.0, 2.0 * np.pi, size=n)
    strength = rng.uniform(0.0, 0.15, size=n)

    ys, xs = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij")
    unit_x = (xs / (size - 1) - 0.5)[None]
    unit_y = (ys / (size - 1) - 0.5)[None]
    gradient = strength[:, None, None] * (np.cos(angle)[:, None, None] * unit_x + np.sin(angle)[:, None, None] * unit_y)
    background = bg_base[:, :, None, None] + gradient[:, None]

    # Coverage in [0, 1] with a one-pixel soft edge (anti-aliasing), per class.
    coverage = np.empty((n, size, size))
    for label, name in enumerate(CLASS_NAMES):
        idx = np.flatnonzero(labels == label)
        if idx.size == 0:
            continue
        dx = xs[None] - cx[idx, None, None]
        dy = ys[None] - cy[idx, None, None]
        dist = _signed_distance(name.split("_")[1], dx, dy, radius[idx, None, None])
        coverage[idx] = np.clip(0.5 - dist / scale, 0.0, 1.0)

    alpha = coverage[:, None]
    images = (1.0 - alpha) * background + alpha * fg[:, :, None, None]
    images = np.clip(images, 0.0, 1.0) * 2.0 - 1.0
    return torch.from_numpy(images.astype(np.float32)), torch.from_numpy(labels.astype(np.int64))
