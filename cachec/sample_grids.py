"""Sample images as labelled PNG grids: what ``cachec run`` writes for a person to look at.

Each file says what it shows (model, policy, backend, steps, seed, NFE, fidelity) in a band above
the images, so a folder of runs can be told apart; replacing an earlier file is said on stderr.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .atomic_write import save_image
from .progress import stage


def label_font(size: int = 14):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def grid(images: torch.Tensor, path: Path, label: str) -> None:
    """Save ``images`` as one PNG grid with ``label`` written above it; says so when it replaces a file."""
    from PIL import Image, ImageDraw

    n, c, h, w = images.shape
    img = images[:, :3] if c >= 3 else images[:, :1].repeat(1, 3, 1, 1)
    cols = min(n, 8)
    rows = (n + cols - 1) // cols
    scale = max(1, 128 // max(h, w))
    canvas = torch.ones(3, rows * (h + 2), cols * (w + 2))
    for i in range(n):
        r, q = divmod(i, cols)
        canvas[:, r * (h + 2) + 1 : r * (h + 2) + 1 + h, q * (w + 2) + 1 : q * (w + 2) + 1 + w] = img[i]
    arr = (canvas.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    grid = Image.fromarray(arr)
    grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    font = label_font(14)
    band = 22 * (label.count("\n") + 1)
    im = Image.new("RGB", (max(grid.width, 480), grid.height + band), "white")
    ImageDraw.Draw(im).multiline_text((4, 3), label, fill="black", font=font)
    im.paste(grid, (0, band))
    _save(im, path)


def side_by_side(columns: list[torch.Tensor], labels: list[str], path: Path, title: str) -> None:
    """Images of several runs side by side (one column each, one row per image), a label above each
    column and a title above all; says so when it replaces a file."""
    from PIL import Image, ImageDraw

    font = label_font(14)
    n, _, h, w = columns[0].shape
    scale = max(1, 128 // max(h, w))
    cell_w, cell_h = w * scale + 8, h * scale + 8
    band = 46
    col_w = max(cell_w, 420)
    im = Image.new("RGB", (col_w * len(columns), 24 + band + n * cell_h), "white")
    draw = ImageDraw.Draw(im)
    draw.text((4, 3), title, fill="black", font=font)
    for c, (images, label) in enumerate(zip(columns, labels, strict=True)):
        draw.multiline_text((c * col_w + 4, 24), label, fill="black", font=font)
        for i in range(n):
            arr = (images[i, :3].permute(1, 2, 0).float().numpy() * 255).round().astype("uint8")
            tile = Image.fromarray(arr).resize((w * scale, h * scale), Image.NEAREST)
            im.paste(tile, (c * col_w + 4, 24 + band + i * cell_h))
    _save(im, path)


def _save(im, path: Path) -> None:
    """Write ``im``, saying so when it replaces an earlier file (sample grids are never silently overwritten)."""
    if path.exists():
        stage(f"replacing {path}")
    save_image(im, path)  # whole or not at all: a full disk leaves no 0-byte PNG
