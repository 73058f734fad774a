"""Figures: the plots of ``cachec bench --plots``, drawn with Pillow only (sample grids are
:mod:`cachec.sample_grids`).

Kept out of the measuring code (:mod:`cachec.bench`, :mod:`cachec.cli`) so that measuring never
imports a drawing library's fonts, and figures can be redrawn from a bench result alone.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from .atomic_write import save_image
from .sample_grids import label_font

_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


class _Axes:
    """A minimal plot area: maps data to pixels, draws frame, ticks and labels."""

    def __init__(self, draw, box, xlim, ylim, ylog=False):
        self.d, self.box, self.xlim, self.ylim, self.ylog = draw, box, xlim, ylim, ylog

    def _y(self, v):
        lo, hi = self.ylim
        if self.ylog:
            v, lo, hi = math.log10(max(v, 10**lo)), lo, hi
        return self.box[3] - (v - lo) / (hi - lo) * (self.box[3] - self.box[1])

    def xy(self, x, y):
        lo, hi = self.xlim
        return (self.box[0] + (x - lo) / (hi - lo) * (self.box[2] - self.box[0]), self._y(y))

    def frame(self, xticks, yticks, xlabel, ylabel, font):
        x0, y0, x1, y1 = self.box
        for t in yticks:
            y = self._y(10**t if self.ylog else t)
            self.d.line([(x0, y), (x1, y)], fill=(230, 230, 230))
            lab = f"1e{t}" if self.ylog else f"{t:g}"
            self.d.text((x0 - 6, y), lab, fill="black", font=font, anchor="rm")
        for t in xticks:
            x = self.xy(t, self.ylim[0] if not self.ylog else 10 ** self.ylim[0])[0]
            self.d.line([(x, y1), (x, y1 + 4)], fill="black")
            self.d.text((x, y1 + 6), f"{t:g}", fill="black", font=font, anchor="mt")
        self.d.rectangle(self.box, outline="black")
        self.d.text(((x0 + x1) / 2, y1 + 26), xlabel, fill="black", font=font, anchor="mt")
        self.d.text((x0, y0 - 8), ylabel, fill="black", font=font, anchor="ld")


def _nice_ticks(lo: float, hi: float, n: int = 6, integer: bool = False) -> list[float]:
    span = hi - lo or 1.0
    raw = max(span / n, 1.0) if integer else span / n
    mag = 10 ** math.floor(math.log10(raw))
    mults = (1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)
    step = min((m * mag for m in mults if m * mag >= raw), default=10 * mag)
    start = math.ceil(lo / step) * step
    ticks, t = [], start
    while t <= hi + 1e-9 * span:
        ticks.append(round(t, 10))
        t += step
    return ticks


def plot_schedule(result, path: Path) -> None:
    """One row per policy, one cell per step: dark = full step; the shade is the share of seeds with a
    full step there (dynamic policies may differ per seed)."""
    from PIL import Image, ImageDraw

    font = label_font(14)
    title = (f"schedule per step (dark = full, light = cached), {result.steps} steps, "
             f"{len(result.seeds)} seed(s)")
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = int(max(probe.textlength(r["policy"], font=font) for r in result.rows)) + 24
    cell = max(6, min(24, 900 // result.steps))
    w = max(label_w + cell * result.steps + 60, int(probe.textlength(title, font=font)) + 20)
    h = 60 + 30 * len(result.rows) + 40
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    d.text((10, 10), title, fill="black", font=font)
    for k, r in enumerate(result.rows):
        y = 45 + 30 * k
        d.text((10, y + 11), r["policy"], fill="black", font=font, anchor="lm")
        for i in range(result.steps):
            share = statistics.fmean(r["schedules"][str(s)][i] == "F" for s in result.seeds)
            g = int(round(225 - share * 195))
            x = label_w + cell * i
            d.rectangle([x, y, x + cell - 2, y + 22], fill=(g, g, min(255, g + 30)))
    y = 45 + 30 * len(result.rows) + 4
    every = max(1, math.ceil(result.steps / 10))
    for i in range(0, result.steps, every):
        d.text((label_w + cell * i + (cell - 2) / 2, y), str(i), fill="black", font=font, anchor="ma")
    d.text((label_w + cell * result.steps + 8, y), "step", fill="black", font=font)
    save_image(im, path)


def plot_error_curve(result, path: Path) -> None:
    """Relative L2 of the latent against ``none`` after each step, log scale (exact zeros sit on the floor)."""
    from PIL import Image, ImageDraw

    font = label_font(14)
    rows = [r for r in result.rows if r["policy"] != "none"]
    im = Image.new("RGB", (900, 520), "white")
    d = ImageDraw.Draw(im)
    values = [v for r in rows for v in r["rel_l2_per_step"] if v > 0]
    hi = math.ceil(math.log10(max(values))) if values else 0
    lo = math.floor(math.log10(min(values))) if values else -1
    lo = max(lo, hi - 8)
    if lo == hi:
        lo -= 1
    box = (80, 50, 660, 460)
    ax = _Axes(d, box, (0, max(1, result.steps - 1)), (lo, hi), ylog=True)
    d.text((10, 10), f"relative L2 of the latent vs none after each step (mean over seeds; 0 is drawn at 1e{lo})",
           fill="black", font=font)
    ax.frame(_nice_ticks(0, result.steps - 1, 8, integer=True), list(range(lo, hi + 1)), "step", "rel. L2", font)
    for k, r in enumerate(rows):
        c = _COLOURS[k % len(_COLOURS)]
        pts = [ax.xy(i, v) for i, v in enumerate(r["rel_l2_per_step"])]
        if len(pts) > 1:
            d.line(pts, fill=c, width=2)
        for p in pts:
            d.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=c)
        ly = 60 + 22 * k
        d.line([(675, ly), (700, ly)], fill=c, width=3)
        d.text((706, ly), r["policy"], fill="black", font=font, anchor="lm")
    save_image(im, path)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower NFE, higher PSNR), by NFE."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(result, path: Path) -> None:
    """NFE (x) against PSNR to ``none`` (y); the non-dominated policies are joined (``none`` is at ∞ dB)."""
    from PIL import Image, ImageDraw

    font = label_font(14)
    rows = [r for r in result.rows if r["psnr_vs_none"] is not None]
    im = Image.new("RGB", (900, 560), "white")
    d = ImageDraw.Draw(im)
    d.text((10, 10), f"NFE vs fidelity ({result.steps} steps; none = {result.steps} NFE at infinite PSNR)",
           fill="black", font=font)
    box = (80, 50, 860, 480)
    xs = [r["nfe"] for r in rows] + [0, result.steps]
    ys = [r["psnr_vs_none"] for r in rows] or [0.0, 1.0]
    ylo, yhi = min(ys), max(ys)
    pad = max(1.0, 0.1 * (yhi - ylo))
    ax = _Axes(d, box, (0, max(xs) * 1.05), (ylo - pad, yhi + pad))
    ax.frame(_nice_ticks(0, max(xs) * 1.05), _nice_ticks(ylo - pad, yhi + pad), "NFE (full-forward equivalents)",
             "PSNR vs none (dB)", font)
    x_none = ax.xy(result.steps, ylo)[0]
    for y in range(box[1], box[3], 8):
        d.line([(x_none, y), (x_none, y + 4)], fill=(150, 150, 150))
    d.text((x_none - 4, box[1] + 4), "none", fill=(100, 100, 100), font=font, anchor="rt")
    pts = [(r["nfe"], r["psnr_vs_none"]) for r in rows]
    front = pareto_front(pts)
    if len(front) > 1:
        d.line([ax.xy(*pts[i]) for i in front], fill=(214, 39, 40), width=2)
    for k, (r, p) in enumerate(zip(rows, pts, strict=True)):
        x, y = ax.xy(*p)
        c = (214, 39, 40) if k in front else (31, 119, 180)
        d.ellipse([x - 5, y - 5, x + 5, y + 5], fill=c)
        d.text((x + 8, y - 8), r["policy"], fill="black", font=font, anchor="ls")
    d.text((box[0], box[3] + 48), "red: Pareto front (no policy has both lower NFE and higher PSNR)",
           fill=(214, 39, 40), font=font)
    save_image(im, path)


def write_plots(result, out_dir: str) -> list[str]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "schedule.png", out / "error_curve.png", out / "pareto.png"]
    plot_schedule(result, paths[0])
    plot_error_curve(result, paths[1])
    plot_pareto(result, paths[2])
    result.plots = [str(p) for p in paths]
    return result.plots
