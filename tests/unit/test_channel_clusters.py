"""HyCa's calibration maths (:mod:`cachec.channel_clusters`) on synthetic trajectories, no model:
channels that are constant, linear and quadratic in the step fall into three clusters, and each
cluster's least-error Taylor order is the one the definition predicts (constant: reuse is exact,
so order 0 wins the tie; linear: order 1 is exact; quadratic: order 2 has the least error)."""

from __future__ import annotations

import torch

from cachec import channel_clusters as cc


def trajectory(T: int = 16) -> torch.Tensor:
    """``[T, 2, 5, 9]``: channels 0-2 constant, 3-5 linear, 6-8 quadratic in the step (scales differ)."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2, 5, 9, generator=g, dtype=torch.float64) + 3.0
    t = torch.arange(T, dtype=torch.float64).view(T, 1, 1, 1)
    kind = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    scale = torch.tensor([1.0, 2.0, 0.5] * 3, dtype=torch.float64)
    growth = torch.where(kind == 0, 0.0, torch.where(kind == 1, t / T, (t / T) ** 2 * 3))
    return (base * (1 + growth)) * scale


def test_channels_cluster_by_their_dynamics_and_each_cluster_takes_its_best_order():
    values = trajectory()
    section = cc.measure({"b0_ff__0": list(values)}, clusters=3, max_gap=4)
    labels = section["streams"]["b0_ff__0"]["labels"]
    groups = [set(labels[0:3]), set(labels[3:6]), set(labels[6:9])]
    assert all(len(g) == 1 for g in groups) and len(set.union(*groups)) == 3, labels
    errors = section["streams"]["b0_ff__0"]["errors"]
    for kind, want in ((0, 0), (1, 1), (2, 2)):
        err = errors[labels[3 * kind]]
        for N in (2, 3, 4):
            by_order = [err[o][N - 1] for o in range(3)]
            best = min(range(3), key=lambda o: (by_order[o], o))
            assert best == want, (kind, N, by_order)
    assert all(e == 0.0 for cluster in errors for order in cluster for e in order[:1])  # N=1: nothing cached


def test_errors_are_the_mean_squared_error_of_the_cached_steps():
    """N=2 on a linear channel (slope 0.5; full at 0, 2, 4, 6): order 0 serves F(t−1) at every cached
    step, error 0.5² each; order 1 is exact once two full steps exist, so only step 1 errs (1 of 4)."""
    T = 8
    values = (torch.arange(T, dtype=torch.float64) * 0.5).view(T, 1, 1).expand(T, 3, 1).clone()
    errors = cc.solver_errors(values, [0], max_gap=2)
    assert abs(errors[0][0][1] - 0.25) < 1e-12 and abs(errors[0][1][1] - 0.25 / 4) < 1e-12


def test_kmeans_is_deterministic_and_caps_clusters_at_the_channel_count():
    values = trajectory()
    d = cc.descriptors(values)
    assert cc.kmeans(d, 3) == cc.kmeans(d.clone(), 3)
    assert len(set(cc.kmeans(d[:2], 5))) <= 2


def test_large_streams_are_measured_on_evenly_spaced_rows():
    x = torch.arange(2 * 300 * 3, dtype=torch.float32).view(2, 300, 3)
    rows = cc.sampled_rows(x)
    assert rows.shape == (cc.MAX_ROWS, 3)
    assert rows[0].tolist() == [0.0, 1.0, 2.0] and rows[-1].tolist() == x[1, -1].tolist()
    assert cc.sampled_rows(x[:, :5]).shape == (10, 3)  # small: every row
