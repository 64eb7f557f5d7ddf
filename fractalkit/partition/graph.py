"""GraphSubsets: cut a node-row graph encoding into subsets of consecutive nodes.

Shape letters: N graphs, n = ``num_nodes`` (node rows in one instance), W = ``row_width`` (entries
per node row), k subsets, s = n / k nodes per subset.

A graph enters fractalkit as one row per node (:class:`fractalkit.graphs.GraphEncoding`, in the
graph wing, writes it): row i holds node i's type and its edges to the nodes before it, and the
rows are concatenated into ``[N, n * W]``. :class:`GraphSubsets` cuts such an encoding into k
subsets of consecutive nodes (whole rows). Child j carries its nodes' types and their edges to
*every* earlier node (in earlier subsets or earlier in its own subset), so with an
autoregressive level over the subsets the chain rule
``log p(G) = sum_j log p(subset_j | subsets < j)`` is exact, and ``merge(split(x)) == x``. A
subset is again a node-row encoding (s rows of width W), so GraphSubsets nests: 9 nodes -> 3
subsets of 3 -> 3 single nodes -> (a :class:`~fractalkit.SequenceChunks` of chunk 1) the node's
W elements -> a categorical leaf (``GraphEncoding.partitioners`` builds that chain).

Graphs themselves, their encoding, node orders, graph likelihoods and metrics live in
:mod:`fractalkit.graphs`; this module is only the partitioner (pure tensor code).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fractalkit.partition.base import Partitioner, _positive_int
from fractalkit.registry import register

__all__ = ["GraphSubsets"]


@register("graph_subsets")
class GraphSubsets(Partitioner):
    """Cut a node-row graph encoding ``[N, n * W]`` into k subsets of s = n / k consecutive nodes.

    Child j is ``[s * W]``: the rows of nodes ``j s .. (j + 1) s - 1``, i.e. their types and
    their edges to all earlier nodes (see the module docstring), so an AR level over the subsets
    keeps the chain rule exact. The grid is ``(1, k)``.

    Args:
        num_nodes: n, nodes in one instance (the whole graph, or a subset one level down).
        row_width: W, entries per node row (``GraphEncoding.row_width``: the whole graph's n).
        subsets: k; must divide ``num_nodes``.

    Raises:
        ValueError: if a size is not a positive int or ``subsets`` does not divide ``num_nodes``.

    Example:
        >>> p = GraphSubsets(num_nodes=9, row_width=9, subsets=3)
        >>> p.event_shape, p.child_shape, p.grid
        ((81,), (27,), (1, 3))
    """

    def __init__(self, num_nodes: int, row_width: int, subsets: int) -> None:
        name = type(self).__name__
        self.num_nodes = _positive_int(name, "num_nodes", num_nodes)
        self.row_width = _positive_int(name, "row_width", row_width)
        self.subsets = _positive_int(name, "subsets", subsets)
        if self.num_nodes % self.subsets:
            raise ValueError(
                f"{name}: subsets={subsets} does not divide num_nodes={num_nodes}; choose a "
                "divisor (pad the graphs with more node slots if needed)"
            )
        self.nodes_per_child = self.num_nodes // self.subsets
        self.event_shape = (self.num_nodes * self.row_width,)
        self.child_shape = (self.nodes_per_child * self.row_width,)
        self.grid = (1, self.subsets)

    def _split(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], self.subsets, *self.child_shape)  # [N, k, s * W]

    def _merge(self, children: Tensor) -> Tensor:
        return children.reshape(children.shape[0], *self.event_shape)  # [N, n * W]

    @property
    def has_links(self) -> bool:
        """True over a whole graph (``num_nodes == row_width``, the top graph level): there a
        row's edge slots name nodes of this instance, so :meth:`links` can read them."""
        return self.num_nodes == self.row_width

    def links(self, children: Tensor) -> Tensor | None:
        """Which children share an edge, read from the *later* child's rows only.

        Only edges stored in a child's own rows are read (an edge between nodes a > b is stored
        in a's row), so a link between j and a later child i is known once i is.

        Args:
            children: int64 ``[N, k, s * W]`` (node rows of width W).

        Returns:
            bool ``[N, k, k]``: ``[n, j, i]`` is True when i > j and a node row of child i
            holds an edge to a node of child j; None below the top graph level (see
            :attr:`has_links`).
        """
        if not self.has_links:
            return None
        n_inst, k = children.shape[:2]
        s, w = self.nodes_per_child, self.row_width  # w == num nodes of the whole graph
        rows = children.reshape(n_inst, k * s, w)
        edges = torch.nn.functional.pad(rows[:, :, 1:] != 0, (0, 1))  # [N, a, b]: edge(a, b)
        edges = edges & torch.ones(w, w, dtype=torch.bool, device=children.device).tril(-1)
        links = edges.view(n_inst, k, s, k, s).any(4).any(2)  # [N, i, j]
        links = links & torch.ones(k, k, dtype=torch.bool, device=children.device).tril(-1)
        return links.transpose(1, 2)  # [N, j, i]

    def config(self) -> dict[str, Any]:
        """``{"kind": "graph_subsets", "num_nodes": n, "row_width": W, "subsets": k}``."""
        return {
            "kind": self.kind,
            "num_nodes": self.num_nodes,
            "row_width": self.row_width,
            "subsets": self.subsets,
        }
