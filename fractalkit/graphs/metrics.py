"""The graph-generation field's MMD metrics: degree, clustering and 4-node orbit counts.

Shape letters: n nodes of one graph, G graphs in a set.

These follow the evaluation code of GraphRNN (You et al. 2018) as used by GDSS (Jo et al.
2022, ``utils/loader.py: load_eval_settings`` and ``evaluation/stats.py``):

- **degree**: each graph's degree histogram (counts of degree 0, 1, ..., max), normalised to
  a pmf; kernel :func:`gaussian_emd` with sigma = 1 (ground distance |i - j| between bins);
- **clustering**: each graph's histogram of node clustering coefficients over 100 equal bins
  on [0, 1], normalised to a pmf; :func:`gaussian_emd` with sigma = 0.1 and the bin distance
  divided by 100 (``distance_scaling=100``);
- **orbit**: each graph's 15 ORCA orbit counts of graphlets with 2-4 nodes, summed over nodes
  and divided by the number of nodes (not normalised); kernel :func:`gaussian` (Euclidean)
  with sigma = 30.

and :func:`mmd` is their biased (V-statistic) estimate ``mean k(X, X) + mean k(Y, Y) - 2 mean
k(X, Y)``, the squared MMD, which is what those papers report. ORCA itself is not used: the
orbit counts come from enumerating every connected induced subgraph on 2, 3 and 4 nodes
(:func:`orbit_counts`), in ORCA's orbit numbering (Hočevar and Demšar 2014; Pržulj 2007):

====== =============================== ===========================================
orbit  graphlet                        the node's position
====== =============================== ===========================================
0      edge                            either end (the degree)
1, 2   path on 3 nodes                 end, middle
3      triangle                        any
4, 5   path on 4 nodes                 end, inner
6, 7   star on 4 nodes (claw)          leaf, centre
8      cycle on 4 nodes                any
9-11   paw (triangle with a tail)      tail end, triangle node of degree 2, hub
12, 13 diamond (4-cycle with a chord)  degree 2, degree 3
14     complete graph on 4 nodes       any
====== =============================== ===========================================

The EMD between two pmfs on the same 1-D bins with ground distance ``|i - j| / scaling`` is
the L1 distance of their cumulative sums divided by the scaling, which is what ``pyemd``
computes for these inputs; no optimal-transport package is needed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
from torch import Tensor

from fractalkit.graphs.encoding import Graph
from fractalkit.validation import check_count, check_finite_number

__all__ = [
    "MMD_SETTINGS",
    "clustering_coefficients",
    "clustering_histogram",
    "degree_histogram",
    "gaussian",
    "gaussian_emd",
    "graph_mmd",
    "graphs_to_adjacency",
    "mmd",
    "orbit_counts",
]

#: The kernel settings of GraphRNN / GDSS: statistic -> (kernel name, sigma, distance scaling).
MMD_SETTINGS: dict[str, tuple[str, float, float]] = {
    "degree": ("gaussian_emd", 1.0, 1.0),
    "clustering": ("gaussian_emd", 0.1, 100.0),
    "orbit": ("gaussian", 30.0, 1.0),
}


def _adjacency(adj: Tensor | np.ndarray, where: str) -> np.ndarray:
    a = adj.detach().cpu().numpy() if isinstance(adj, Tensor) else np.asarray(adj)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{where}: expected a square [n, n] adjacency, got shape {list(a.shape)}")
    a = a != 0
    if not np.array_equal(a, a.T):
        raise ValueError(f"{where}: the adjacency must be symmetric (an undirected graph)")
    if a.diagonal().any():
        raise ValueError(f"{where}: the adjacency must have a zero diagonal (no self-loops)")
    return a


def graphs_to_adjacency(graph: Graph, *, drop_isolated: bool = False) -> list[np.ndarray]:
    """A :class:`~fractalkit.graphs.Graph` batch as a list of bool ``[n_g, n_g]`` arrays.

    Args:
        graph: N graphs (padding nodes are dropped; edge types are ignored).
        drop_isolated: also drop nodes without edges, as GDSS does to generated graphs
            (``adjs_to_graphs``; a graph left empty keeps one node).

    Returns:
        N bool numpy arrays.
    """
    adj = (graph.adjacency != 0).cpu().numpy()
    out = []
    for g, size in enumerate(graph.num_nodes.tolist()):
        a = adj[g, :size, :size]
        if drop_isolated:
            keep = a.any(1)
            a = a[keep][:, keep] if keep.any() else np.zeros((1, 1), dtype=bool)
        out.append(a)
    return out


def degree_histogram(adj: Tensor | np.ndarray) -> np.ndarray:
    """Counts of nodes with degree 0, 1, ..., max degree (``networkx.degree_histogram``).

    Args:
        adj: ``[n, n]`` symmetric adjacency (non-zero = edge).

    Returns:
        float64 ``[max_degree + 1]`` counts.
    """
    a = _adjacency(adj, "degree_histogram")
    deg = a.sum(1)
    return np.bincount(deg, minlength=1).astype(np.float64) if a.size else np.zeros(1)


def clustering_coefficients(adj: Tensor | np.ndarray) -> np.ndarray:
    """Each node's clustering coefficient ``2 T / (d (d - 1))`` (0 where d < 2), as networkx.

    Args:
        adj: ``[n, n]`` symmetric adjacency.

    Returns:
        float64 ``[n]`` in [0, 1].
    """
    a = _adjacency(adj, "clustering_coefficients").astype(np.float64)
    deg = a.sum(1)
    tri = np.einsum("ij,jk,ki->i", a, a, a) / 2.0
    pairs = deg * (deg - 1) / 2.0
    return np.where(pairs > 0, tri / np.maximum(pairs, 1.0), 0.0)


def clustering_histogram(adj: Tensor | np.ndarray, bins: int = 100) -> np.ndarray:
    """Histogram of the clustering coefficients over ``bins`` (>= 1) equal bins on [0, 1] (counts)."""
    bins = check_count("clustering_histogram", "bins", bins)
    hist, _ = np.histogram(clustering_coefficients(adj), bins=bins, range=(0.0, 1.0), density=False)
    return hist.astype(np.float64)


def orbit_counts(adj: Tensor | np.ndarray) -> np.ndarray:
    """ORCA's 15 orbit counts of graphlets on 2-4 nodes, per node (see the module docstring).

    Entry ``[v, o]`` is the number of connected *induced* subgraphs on 2, 3 or 4 nodes in
    which node v sits at orbit o. Enumerates every 3- and 4-node subset, so meant for the small
    graphs of these benchmarks (at most a few dozen nodes).

    Args:
        adj: ``[n, n]`` symmetric adjacency.

    Returns:
        int64 ``[n, 15]``.
    """
    a = _adjacency(adj, "orbit_counts")
    n = a.shape[0]
    out = np.zeros((n, 15), dtype=np.int64)
    out[:, 0] = a.sum(1)
    for k in (3, 4):
        if n < k:
            continue
        subsets = np.array(list(itertools.combinations(range(n), k)), dtype=np.int64)  # [M, k]
        sub = a[subsets[:, :, None], subsets[:, None, :]]  # [M, k, k]
        deg = sub.sum(2)  # [M, k]
        m = deg.sum(1) // 2  # [M] edges
        connected = (m >= k - 1) & (deg.min(1) >= 1)
        orbit = np.full(deg.shape, -1, dtype=np.int64)
        if k == 3:
            path, tri = connected & (m == 2), connected & (m == 3)
            orbit[path] = np.where(deg[path] == 1, 1, 2)
            orbit[tri] = 3
        else:
            maxdeg = deg.max(1)
            p4 = connected & (m == 3) & (maxdeg == 2)
            star = connected & (m == 3) & (maxdeg == 3)
            cycle = connected & (m == 4) & (maxdeg == 2)
            paw = connected & (m == 4) & (maxdeg == 3)
            diamond, k4 = connected & (m == 5), connected & (m == 6)
            orbit[p4] = np.where(deg[p4] == 1, 4, 5)
            orbit[star] = np.where(deg[star] == 1, 6, 7)
            orbit[cycle] = 8
            orbit[paw] = np.choose(deg[paw] - 1, [9, 10, 11])
            orbit[diamond] = np.where(deg[diamond] == 2, 12, 13)
            orbit[k4] = 14
        hit = orbit >= 0
        np.add.at(out, (subsets[hit], orbit[hit]), 1)
    return out


def gaussian_emd(x: np.ndarray, y: np.ndarray, sigma: float = 1.0, distance_scaling: float = 1.0) -> float:
    """``exp(-EMD(x, y)^2 / (2 sigma^2))`` for two 1-D histograms (padded to one length).

    Args:
        x, y: float ``[b_x]``, ``[b_y]`` with equal total mass (pmfs, as :func:`mmd` makes them).
        sigma: the kernel's width.
        distance_scaling: the ground distance between bins i and j is ``|i - j| / scaling``.

    Returns:
        The kernel value in (0, 1].
    """
    sigma, distance_scaling = _kernel_widths("gaussian_emd", sigma, distance_scaling)
    size = max(len(x), len(y))
    x = np.pad(np.asarray(x, dtype=np.float64), (0, size - len(x)))
    y = np.pad(np.asarray(y, dtype=np.float64), (0, size - len(y)))
    emd = float(np.abs(np.cumsum(x - y)).sum()) / distance_scaling
    return float(np.exp(-emd * emd / (2 * sigma * sigma)))


def gaussian(x: np.ndarray, y: np.ndarray, sigma: float = 1.0, distance_scaling: float = 1.0) -> float:
    """``exp(-||x - y||^2 / (2 sigma^2))`` (vectors padded to one length; no scaling used).

    ``sigma`` must be finite and positive (as must ``distance_scaling``, though unused).
    """
    sigma, distance_scaling = _kernel_widths("gaussian", sigma, distance_scaling)
    size = max(len(x), len(y))
    x = np.pad(np.asarray(x, dtype=np.float64), (0, size - len(x)))
    y = np.pad(np.asarray(y, dtype=np.float64), (0, size - len(y)))
    d = float(np.linalg.norm(x - y))
    return float(np.exp(-d * d / (2 * sigma * sigma)))


def mmd(
    samples1: Sequence[np.ndarray],
    samples2: Sequence[np.ndarray],
    kernel: Callable[..., float],
    *,
    is_hist: bool = True,
    sigma: float = 1.0,
    distance_scaling: float = 1.0,
) -> float:
    """Squared MMD, biased V-statistic: ``mean k(X, X') + mean k(Y, Y') - 2 mean k(X, Y)``.

    Args:
        samples1, samples2: G1 and G2 vectors (histograms or feature vectors).
        kernel: :func:`gaussian_emd` or :func:`gaussian` (or any ``k(x, y, sigma, scaling)``).
        is_hist: normalise each vector to sum 1 first (histograms).
        sigma, distance_scaling: passed to the kernel.

    Returns:
        The squared MMD (>= 0 up to rounding for a positive-definite kernel).

    Raises:
        ValueError: if a set is empty, a vector is not 1-D or holds NaN/inf (or, for
            histograms, negative counts), or ``sigma``/``distance_scaling`` is not positive.
        TypeError: ``kernel`` not callable, ``sigma``/``distance_scaling`` not numbers.
    """
    if not len(samples1) or not len(samples2):
        raise ValueError("mmd: both sample sets must be non-empty")
    if not callable(kernel):
        raise TypeError(f"mmd: kernel must be a callable k(x, y, sigma, scaling), got {type(kernel).__name__}")
    sigma, distance_scaling = _kernel_widths("mmd", sigma, distance_scaling)

    def prep(s: Sequence[np.ndarray], name: str) -> list[np.ndarray]:
        out = []
        for i, v in enumerate(s):
            try:
                v = np.asarray(v, dtype=np.float64)
            except (TypeError, ValueError) as err:
                raise TypeError(f"mmd: {name}[{i}] is not a vector of numbers ({err})") from None
            if v.ndim != 1 or not np.isfinite(v).all() or (is_hist and (v < 0).any()):
                kind = "finite 1-D vector of non-negative counts" if is_hist else "finite 1-D vector"
                raise ValueError(f"mmd: {name}[{i}] must be a {kind}, got shape {list(v.shape)}: {v!r:.80}")
            out.append(v)
        return [v / v.sum() if v.sum() > 0 else v for v in out] if is_hist else out

    x, y = prep(samples1, "samples1"), prep(samples2, "samples2")

    def disc(a: list[np.ndarray], b: list[np.ndarray]) -> float:
        return sum(kernel(u, v, sigma, distance_scaling) for u in a for v in b) / (len(a) * len(b))

    return disc(x, x) + disc(y, y) - 2 * disc(x, y)


def _kernel_widths(owner: str, sigma: float, distance_scaling: float) -> tuple[float, float]:
    return (check_finite_number(owner, "sigma", sigma, positive=True),
            check_finite_number(owner, "distance_scaling", distance_scaling, positive=True))


def graph_mmd(
    reference: Sequence[Tensor | np.ndarray], generated: Sequence[Tensor | np.ndarray]
) -> dict[str, float]:
    """Degree, clustering and orbit MMD between two sets of graphs, as GDSS reports them.

    Args:
        reference: G1 adjacencies ``[n_g, n_g]`` (e.g. the test set).
        generated: G2 adjacencies (e.g. samples; see :func:`graphs_to_adjacency`).

    Returns:
        ``{"degree", "clustering", "orbit"}``: squared MMDs with :data:`MMD_SETTINGS`.
    """
    kernels = {"gaussian_emd": gaussian_emd, "gaussian": gaussian}

    def stats(graphs: Sequence[Tensor | np.ndarray], name: str) -> list[np.ndarray]:
        if name == "degree":
            return [degree_histogram(a) for a in graphs]
        if name == "clustering":
            return [clustering_histogram(a) for a in graphs]
        return [orbit_counts(a).sum(0) / max(_adjacency(a, "graph_mmd").shape[0], 1) for a in graphs]

    out = {}
    for name, (kernel, sigma, scaling) in MMD_SETTINGS.items():
        out[name] = mmd(
            stats(reference, name), stats(generated, name), kernels[kernel],
            is_hist=name != "orbit", sigma=sigma, distance_scaling=scaling,
        )
    return out

