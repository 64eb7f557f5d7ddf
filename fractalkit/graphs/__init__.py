"""fractalkit.graphs: graph-level likelihoods and the graph-generation field's metrics.

Shape letters: N graphs, n node slots, K sampled node orders.

- :mod:`fractalkit.graphs.likelihood`: for a model over
  :class:`~fractalkit.partition.GraphEncoding` encodings, the canonical-encoding bound and an
  importance-sampled estimate of log p(graph) over node orders
  (:func:`graph_log_likelihood`), and the exact value for tiny graphs
  (:func:`graph_log_likelihood_exact`).
- :mod:`fractalkit.graphs.automorphisms`: ``log |Aut(G)|`` of labelled graphs (needs the
  ``graphs`` extra, ``pynauty``).
- :mod:`fractalkit.graphs.metrics`: degree, clustering and orbit MMDs with the GraphRNN / GDSS
  kernels (:func:`graph_mmd`), and ORCA-numbered 4-node orbit counts (:func:`orbit_counts`).

The node orders themselves (canonical BFS, random BFS with ``log q``, uniform) live in
:mod:`fractalkit.partition.orderings`.
"""

from fractalkit.graphs.automorphisms import log_automorphisms
from fractalkit.graphs.likelihood import (
    GraphLogLikelihood,
    graph_log_likelihood,
    graph_log_likelihood_exact,
)
from fractalkit.graphs.metrics import (
    MMD_SETTINGS,
    clustering_coefficients,
    clustering_histogram,
    degree_histogram,
    gaussian,
    gaussian_emd,
    graph_mmd,
    graphs_to_adjacency,
    mmd,
    orbit_counts,
)

__all__ = [
    "MMD_SETTINGS",
    "GraphLogLikelihood",
    "clustering_coefficients",
    "clustering_histogram",
    "degree_histogram",
    "gaussian",
    "gaussian_emd",
    "graph_log_likelihood",
    "graph_log_likelihood_exact",
    "graph_mmd",
    "graphs_to_adjacency",
    "log_automorphisms",
    "mmd",
    "orbit_counts",
]
