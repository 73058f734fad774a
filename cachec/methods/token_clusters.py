"""ClusCa's tensor maths, as functions traced into weightless segments (:mod:`cachec.methods.clusca`).

* :func:`kmeans_labels` — the full step's K-means of the last block's output tokens, per sample:
  deterministic initial centres (the tokens at positions ``round(i·(N−1)/(K−1))``), a fixed number
  of Lloyd iterations on the squared Euclidean distance (a token joins its nearest centre, the lowest
  index on a tie; a centre with no token stays where it is), and the labels of a last assignment.
* :func:`propagate_and_forecast` — a cached step's MLP stream: ``D_0`` holds the exactly computed
  tokens already (the token variant scattered them into it); every token whose cluster has a fresh
  token moves to ``γ·μ_cluster + (1−γ)·D_0`` (eq. 53–54 of the survey: μ the mean of the cluster's
  fresh values), that is the new ``D_0`` (kept), and the output is TaylorSeer's forecast on it.
* :func:`pick_one_per_cluster` — the host side of a cached step: one token per cluster, drawn at
  random (a seeded generator), a cluster with no token marked by repeating another pick.

Why traced functions rather than graph surgery: the maths is new and small, and
:func:`~cachec.planner.segments.traced` turns it into a segment with symbolic batch.
"""

from __future__ import annotations

import torch


def kmeans_labels(clusters: int, iterations: int):
    """``x [B, N, C] -> labels int64 [B, N]`` (see the module docstring)."""
    def fn(x: torch.Tensor) -> tuple[torch.Tensor]:
        x = x.float()
        n = x.shape[1]
        start = [round(i * (n - 1) / (clusters - 1)) if clusters > 1 else (n - 1) // 2 for i in range(clusters)]
        centres = x[:, start, :]
        slots = torch.arange(clusters, device=x.device)
        labels = _nearest(x, centres)
        for _ in range(iterations):
            member = (labels.unsqueeze(-1) == slots).to(x.dtype)  # [B, N, K]
            counts = member.sum(dim=1)  # [B, K]
            sums = member.transpose(1, 2) @ x  # [B, K, C]
            centres = torch.where(counts.unsqueeze(-1) > 0, sums / counts.clamp_min(1.0).unsqueeze(-1), centres)
            labels = _nearest(x, centres)
        return (labels,)

    return fn


def _nearest(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index of each token's nearest centre, ``‖x‖² − 2x·c + ‖c‖²`` (argmin: the lowest on a tie)."""
    dist = (x * x).sum(-1, keepdim=True) - 2.0 * (x @ centres.transpose(1, 2)) + (centres * centres).sum(-1).unsqueeze(1)
    return dist.argmin(dim=-1)


def propagate_and_forecast(clusters: int, states: int):
    """``(C, [[γ]], labels, index, D_0 with fresh rows, D_1, …) -> (F̂, new D_0)``.

    Slot ``j`` of ``index`` is cluster ``j``'s fresh token; a slot whose token is not in cluster ``j``
    (an empty cluster, or no fresh tokens at all) contributes nothing."""
    def fn(coeffs, gamma, labels, index, d0, *higher):
        gamma = gamma[0, 0]
        dim = d0.shape[-1]
        picked = labels.gather(1, index)  # [B, k]
        slots = torch.arange(index.shape[1], device=d0.device)
        valid = (picked == slots).to(d0.dtype)  # [B, k]
        member = (picked.unsqueeze(-1) == torch.arange(clusters, device=d0.device)).to(d0.dtype) * valid.unsqueeze(-1)
        values = d0.gather(1, index.unsqueeze(-1).expand(-1, -1, dim))  # [B, k, C]
        counts = member.sum(dim=1)  # [B, K]
        mean = (member.transpose(1, 2) @ values) / counts.clamp_min(1.0).unsqueeze(-1)  # [B, K, C]
        spread = mean.gather(1, labels.unsqueeze(-1).expand(-1, -1, dim))  # [B, N, C]
        has = (counts > 0).gather(1, labels).unsqueeze(-1)  # [B, N, 1]
        new_d0 = torch.where(has, gamma * spread + (1.0 - gamma) * d0, d0)
        out = coeffs[0, 0] * new_d0
        for i in range(1, states):
            out = out + coeffs[0, i] * higher[i - 1]
        return out, new_d0

    return fn


def pick_one_per_cluster(labels: torch.Tensor, clusters: int, generator: torch.Generator) -> torch.Tensor:
    """``int64 [B, K]``: for each sample and cluster j, one token of cluster j drawn uniformly (the
    member of highest score ``rand(B, N)`` from ``generator``); an empty cluster repeats the pick of
    the first non-empty one (:func:`propagate_and_forecast` ignores it: its token is not in j)."""
    b, n = labels.shape
    score = torch.rand(b, n, generator=generator).to(labels.device)
    member = labels.unsqueeze(1) == torch.arange(clusters, device=labels.device).view(1, -1, 1)  # [B, K, N]
    masked = torch.where(member, score.unsqueeze(1), torch.full_like(score.unsqueeze(1), -1.0))
    best, idx = masked.max(dim=-1)
    present = best >= 0
    first = idx.gather(1, present.to(torch.int64).argmax(dim=1, keepdim=True))
    return torch.where(present, idx, first)
