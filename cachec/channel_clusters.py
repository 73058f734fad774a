"""HyCa's calibration: cluster the channels of each cached stream by their dynamics, and measure
how well each Taylor order forecasts each cluster (``hyca:N,calib=FILE``, docs/methods.md).

Why a separate module: it is pure tensor maths on a recorded trajectory (no program, no model),
so ``cachec calibrate`` (:mod:`cachec.calibration`) stores its result next to MagCache's ratios
and the method (:mod:`cachec.methods.hyca`) only picks, per cluster, the order of least error.

For one stream with values ``F_t`` (``t = 0..T−1``, channels last):

* **descriptor** of channel ``c``: ``d_c[t] = rms(F_{t+1}[c] − F_t[c]) / rms(F[c])`` for
  ``t = 0..T−2`` (rms over batch and tokens; the denominator over the whole trajectory), so
  channels that move alike in relative terms share a cluster whatever their scale;
* **clusters**: K-means on the descriptors with ``K = min(clusters, C)``, deterministic: initial
  centres are the channels at ranks ``round(i·(C−1)/(K−1))`` of the descriptors' norms (ties by
  channel index), then :data:`KMEANS_ITERATIONS` Lloyd iterations (a channel joins its nearest
  centre, the lowest index on a tie; an empty cluster keeps its centre);
* **rows**: the statistics are means over batch and tokens, estimated on at most :data:`MAX_ROWS`
  evenly spaced (batch × token) rows of each stream, so that a large model's calibration (FLUX:
  4096 tokens × 3072 channels × ~150 streams) stays a fraction of the uncached trajectory it
  records; a small model (``builtin:tiny-dit``, 2 × 64 rows) uses every row;
* **errors**: for each Taylor order ``o ≤ MAX_ORDER`` and interval ``N = 1..max_gap``, the forecast
  of TaylorSeer order ``o`` with full steps at ``0, N, 2N, …`` (no warm-up), and per cluster the
  mean squared error over its channels and the cached steps (0 when no step is cached).
"""

from __future__ import annotations

import math

import torch

MAX_ORDER = 2
MAX_ROWS = 256
KMEANS_ITERATIONS = 10
DEFAULT_CLUSTERS = 4


def descriptors(values: torch.Tensor) -> torch.Tensor:
    """``[C, T−1]`` channel descriptors of a trajectory ``[T, ..., C]`` (float64)."""
    x = values.double().reshape(values.shape[0], -1, values.shape[-1])
    scale = x.pow(2).mean(dim=(0, 1)).sqrt().clamp_min(1e-12)
    moves = (x[1:] - x[:-1]).pow(2).mean(dim=1).sqrt()  # [T-1, C]
    return (moves / scale).T.contiguous()


def kmeans(points: torch.Tensor, clusters: int) -> list[int]:
    """Deterministic K-means labels of ``points`` ``[C, D]`` (see the module docstring)."""
    n = points.shape[0]
    k = max(1, min(clusters, n))
    ranks = sorted(range(n), key=lambda c: (float(points[c].norm()), c))
    picks = [ranks[round(i * (n - 1) / (k - 1))] if k > 1 else ranks[(n - 1) // 2] for i in range(k)]
    centres = points[picks].clone()
    labels = torch.zeros(n, dtype=torch.long)
    for _ in range(KMEANS_ITERATIONS):
        labels = torch.cdist(points, centres).argmin(dim=1)
        for j in range(k):
            members = points[labels == j]
            if len(members):
                centres[j] = members.mean(dim=0)
    return [int(v) for v in labels]


def taylor_forecasts(values: torch.Tensor, order: int, interval: int) -> dict[int, torch.Tensor]:
    """TaylorSeer order ``order`` on ``values`` ``[T, M, C]`` with full steps every ``interval`` from
    step 0: the forecast of every cached step (step -> ``[M, C]``)."""
    D: list[torch.Tensor] = []
    last: int | None = None
    out = {}
    for t in range(values.shape[0]):
        if t % interval == 0:
            new = [values[t]]
            if last is not None:
                for i in range(min(order, len(D))):
                    new.append((new[i] - D[i]) / (t - last))
            D, last = new, t
        else:
            x = t - last
            out[t] = sum(d * (x**i / math.factorial(i)) for i, d in enumerate(D))
    return out


def solver_errors(values: torch.Tensor, labels: list[int], max_gap: int) -> list[list[list[float]]]:
    """``errors[cluster][order][N − 1]``: the mean squared forecast error of each cluster."""
    x = values.double().reshape(values.shape[0], -1, values.shape[-1])
    lab = torch.tensor(labels)
    k = int(lab.max()) + 1
    errors = [[[0.0] * max_gap for _ in range(MAX_ORDER + 1)] for _ in range(k)]
    for order in range(MAX_ORDER + 1):
        for interval in range(1, max_gap + 1):
            forecasts = taylor_forecasts(x, order, interval)
            if not forecasts:
                continue
            sq = sum((f - x[t]).pow(2).mean(dim=0) for t, f in forecasts.items()) / len(forecasts)  # [C]
            for j in range(k):
                members = sq[lab == j]
                errors[j][order][interval - 1] = float(members.mean()) if len(members) else 0.0
    return errors


def sampled_rows(value: torch.Tensor) -> torch.Tensor:
    """``value`` as ``[rows, C]``: every (batch × token) row, or :data:`MAX_ROWS` evenly spaced ones."""
    rows = value.reshape(-1, value.shape[-1])
    if rows.shape[0] <= MAX_ROWS:
        return rows
    pick = torch.linspace(0, rows.shape[0] - 1, MAX_ROWS, device=rows.device).round().long()
    return rows[pick]


def measure(trajectories: dict[str, list[torch.Tensor]], clusters: int = DEFAULT_CLUSTERS,
            max_gap: int = 10) -> dict:
    """HyCa's calibration section: per stream (``SEGMENT__K``), its channel labels and the
    per-cluster errors of each order and interval."""
    streams = {}
    for key, steps in trajectories.items():
        values = torch.stack([sampled_rows(s) for s in steps]).double()
        labels = kmeans(descriptors(values), clusters)
        streams[key] = {"labels": labels, "errors": solver_errors(values, labels, max_gap)}
    return {"clusters": clusters, "max_order": MAX_ORDER, "max_gap": max_gap, "streams": streams}
