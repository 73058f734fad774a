"""ClusCa's graph maths (:mod:`cachec.methods.token_clusters`) on small tensors, no model: the
cases a 64-token model rarely reaches — an empty cluster, no fresh token at all — checked against
the definition written out by hand."""

from __future__ import annotations

import torch

from cachec.methods.token_clusters import kmeans_labels, pick_one_per_cluster, propagate_and_forecast


def test_kmeans_separates_two_obvious_groups_and_ties_go_to_the_lowest_centre():
    x = torch.tensor([[[0.0, 0.0], [0.1, 0.0], [10.0, 10.0], [10.1, 10.0]]])
    (labels,) = kmeans_labels(2, 3)(x)
    assert labels.tolist() == [[0, 0, 1, 1]]
    (same,) = kmeans_labels(2, 3)(torch.zeros(1, 4, 2))  # every distance ties: all to centre 0
    assert same.tolist() == [[0, 0, 0, 0]]


def test_an_empty_cluster_repeats_another_pick_and_contributes_nothing():
    labels = torch.tensor([[0, 0, 2, 2, 2]])  # cluster 1 is empty
    g = torch.Generator().manual_seed(0)
    index = pick_one_per_cluster(labels, 3, g)
    assert labels[0, index[0, 0]] == 0 and labels[0, index[0, 2]] == 2 and index[0, 1] == index[0, 0]
    d0 = torch.arange(10.0).view(1, 5, 2)
    coeffs = torch.tensor([[1.0, 0.0]])
    gamma = torch.tensor([[0.5]])
    out, new_d0 = propagate_and_forecast(3, 2)(coeffs, gamma, labels, index, d0, torch.ones(1, 5, 2))
    want = d0.clone()
    for j in (0, 2):  # by hand: members move half-way to their cluster's fresh token
        t = int(index[0, j])
        members = labels[0] == j
        want[0, members] = 0.5 * d0[0, t] + 0.5 * d0[0, members]
    torch.testing.assert_close(new_d0, want)
    torch.testing.assert_close(out, want)  # coefficients [1, 0]: the forecast is D_0


def test_no_fresh_token_changes_nothing():
    labels = torch.tensor([[0, 1, 1]])
    d0, d1 = torch.randn(1, 3, 4), torch.randn(1, 3, 4)
    coeffs, gamma = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.3]])
    out, new_d0 = propagate_and_forecast(2, 2)(coeffs, gamma, labels, labels.new_zeros((1, 0)), d0, d1)
    torch.testing.assert_close(new_d0, d0)
    torch.testing.assert_close(out, d0 + 2.0 * d1)
