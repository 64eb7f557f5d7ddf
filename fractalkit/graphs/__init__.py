"""fractalkit.graphs: the graph wing. Graphs, their encoding, node orders, likelihoods, metrics.

Shape letters: N graphs, n node slots, K sampled node orders.

- :mod:`fractalkit.graphs.encoding`: :class:`Graph` (padded tensors), :func:`bfs_order` and
  :class:`GraphEncoding` (a graph as one integer row per node, and back).
- :mod:`fractalkit.graphs.orders`: node orders (canonical BFS's random counterpart
  :func:`random_bfs_order` with its exact ``log q``, :func:`random_bfs_log_prob`,
  :func:`uniform_order`, :func:`random_bfs_encodings` for training-time augmentation).
- :mod:`fractalkit.graphs.likelihood`: for a model over
  :class:`GraphEncoding` encodings, the canonical-encoding bound and an
  importance-sampled estimate of log p(graph) over node orders
  (:func:`graph_log_likelihood`), and the exact value for tiny graphs
  (:func:`graph_log_likelihood_exact`).
- :mod:`fractalkit.graphs.automorphisms`: ``log |Aut(G)|`` of labelled graphs (needs the
  ``graphs`` extra, ``pynauty``).
- :mod:`fractalkit.graphs.metrics`: degree, clustering and orbit MMDs with the GraphRNN / GDSS
  kernels (:func:`graph_mmd`), and ORCA-numbered 4-node orbit counts (:func:`orbit_counts`).

The partitioner that cuts an encoding into node subsets, :class:`~fractalkit.partition.GraphSubsets`,
stays in :mod:`fractalkit.partition` (the core); this package imports the core, never the reverse.
"""

from fractalkit.graphs.automorphisms import log_automorphisms
from fractalkit.graphs.encoding import Graph, GraphEncoding, bfs_order
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
from fractalkit.graphs.orders import (
    random_bfs_encodings,
    random_bfs_log_prob,
    random_bfs_order,
    uniform_order,
)

__all__ = [
    "MMD_SETTINGS",
    "Graph",
    "GraphEncoding",
    "GraphLogLikelihood",
    "bfs_order",
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
    "random_bfs_encodings",
    "random_bfs_log_prob",
    "random_bfs_order",
    "uniform_order",
]
