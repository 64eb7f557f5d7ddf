"""Orbit counts (ORCA numbering) against a template brute force, and the MMD kernels.

Shape letters: n nodes, G graphs.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from fractalkit.graphs import (
    Graph,
    clustering_coefficients,
    degree_histogram,
    gaussian,
    gaussian_emd,
    graph_mmd,
    graphs_to_adjacency,
    mmd,
    orbit_counts,
)


def adjacency(n: int, edges: list[tuple[int, int]]) -> np.ndarray:
    a = np.zeros((n, n), dtype=bool)
    for u, v in edges:
        a[u, v] = a[v, u] = True
    return a


# Each graphlet on 2-4 nodes with the ORCA orbit of each of its nodes (Przulj 2007; ORCA).
TEMPLATES = [
    (adjacency(2, [(0, 1)]), [0, 0]),
    (adjacency(3, [(0, 1), (1, 2)]), [1, 2, 1]),
    (adjacency(3, [(0, 1), (1, 2), (0, 2)]), [3, 3, 3]),
    (adjacency(4, [(0, 1), (1, 2), (2, 3)]), [4, 5, 5, 4]),
    (adjacency(4, [(0, 1), (0, 2), (0, 3)]), [7, 6, 6, 6]),
    (adjacency(4, [(0, 1), (1, 2), (2, 3), (3, 0)]), [8, 8, 8, 8]),
    (adjacency(4, [(0, 1), (1, 2), (2, 0), (2, 3)]), [10, 10, 11, 9]),
    (adjacency(4, [(0, 1), (1, 2), (2, 3), (3, 0), (0, 2)]), [13, 12, 13, 12]),
    (adjacency(4, list(itertools.combinations(range(4), 2))), [14, 14, 14, 14]),
]


def brute_force_orbits(a: np.ndarray) -> np.ndarray:
    """Match every node subset's induced subgraph against the templates by permutation."""
    n = a.shape[0]
    out = np.zeros((n, 15), dtype=np.int64)
    for k in (2, 3, 4):
        for subset in itertools.combinations(range(n), k):
            sub = a[np.ix_(subset, subset)]
            for t, orbits in TEMPLATES:
                if t.shape[0] != k:
                    continue
                match = next((p for p in itertools.permutations(range(k)) if np.array_equal(sub, t[np.ix_(p, p)])), None)
                if match is not None:  # subset[i] plays template node match[i]
                    for i, node in enumerate(subset):
                        out[node, orbits[match[i]]] += 1
                    break
    return out


def random_adjacency(n: int, p: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    upper = np.triu(rng.random((n, n)) < p, 1)
    return upper | upper.T


@pytest.mark.parametrize("template", range(len(TEMPLATES)))
def test_orbit_counts_of_each_graphlet(template):
    a, orbits = TEMPLATES[template]
    counts = orbit_counts(a)
    for node, orbit in enumerate(orbits):
        assert counts[node, orbit] == 1
        assert counts[node, 0] == a[node].sum()


@pytest.mark.parametrize("n, p, seed", [(5, 0.5, 0), (6, 0.3, 1), (7, 0.6, 2), (8, 0.4, 3), (6, 1.0, 4), (5, 0.0, 5)])
def test_orbit_counts_match_brute_force(n, p, seed):
    a = random_adjacency(n, p, seed)
    np.testing.assert_array_equal(orbit_counts(a), brute_force_orbits(a))


def test_orbit_counts_identities():
    a = random_adjacency(12, 0.35, 7)
    c = orbit_counts(torch.from_numpy(a))
    deg = a.sum(1)
    tri = np.diagonal(np.linalg.matrix_power(a.astype(int), 3)) // 2
    np.testing.assert_array_equal(c[:, 0], deg)
    np.testing.assert_array_equal(c[:, 3], tri)
    np.testing.assert_array_equal(c[:, 2], deg * (deg - 1) // 2 - tri)


def test_clustering_and_degree_histogram():
    a = adjacency(4, [(0, 1), (1, 2), (2, 0), (2, 3)])  # paw
    np.testing.assert_allclose(clustering_coefficients(a), [1.0, 1.0, 1 / 3, 0.0])
    np.testing.assert_array_equal(degree_histogram(a), [0, 1, 2, 1])


def test_gaussian_emd_is_the_cumulative_l1_distance():
    x, y = np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0])  # mass moved 2 bins
    assert gaussian_emd(x, y, sigma=1.0) == pytest.approx(np.exp(-4 / 2))
    assert gaussian_emd(x, y, sigma=1.0, distance_scaling=2.0) == pytest.approx(np.exp(-1 / 2))
    assert gaussian_emd(np.array([0.5, 0.5]), np.array([0.5, 0.5, 0.0])) == 1.0
    assert gaussian(np.array([3.0, 4.0]), np.array([0.0]), sigma=5.0) == pytest.approx(np.exp(-0.5))


def test_mmd_is_zero_for_equal_sets_and_positive_otherwise():
    ref = [random_adjacency(8, 0.3, s) for s in range(6)]
    same = graph_mmd(ref, ref)
    assert all(abs(v) < 1e-12 for v in same.values())
    other = graph_mmd(ref, [random_adjacency(8, 0.8, s) for s in range(6)])
    assert all(v > 1e-3 for v in other.values())
    with pytest.raises(ValueError, match="non-empty"):
        mmd([], [np.ones(2)], gaussian)


def test_graphs_to_adjacency_drops_padding_and_isolated_nodes():
    adj = torch.zeros(1, 4, 4, dtype=torch.int64)
    adj[0, 0, 1] = adj[0, 1, 0] = 2
    g = Graph(torch.zeros(1, 4, dtype=torch.long), adj, torch.tensor([[True, True, True, False]]))
    assert graphs_to_adjacency(g)[0].shape == (3, 3)
    assert graphs_to_adjacency(g, drop_isolated=True)[0].shape == (2, 2)


@pytest.mark.parametrize(
    "a, match",
    [(np.zeros((2, 3)), "square"), (np.triu(np.ones((3, 3)), 1), "symmetric"), (np.eye(2), "diagonal")],
)
def test_metrics_reject_bad_adjacency(a, match):
    with pytest.raises(ValueError, match=match):
        orbit_counts(a)
