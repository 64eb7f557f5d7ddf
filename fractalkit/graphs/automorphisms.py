"""|Aut(G)|: the number of automorphisms of a labelled graph (node types and edge types).

Shape letters: N graphs, n node slots.

An automorphism is a permutation of the nodes that keeps every node's type and every pair's
edge type. The count uses nauty (through ``pynauty``, the ``graphs`` extra) on the graph with
each edge subdivided: edge {u, v} of type b becomes a new vertex joined to u and v, coloured by
b, and the original vertices are coloured by their node type. The subdivided graph's
automorphisms restricted to the original vertices are exactly the labelled automorphisms (an
edge vertex's image is fixed by its endpoints' images, as there are no multi-edges).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fractalkit.graphs.encoding import Graph

__all__ = ["log_automorphisms"]


def _pynauty():
    try:
        import pynauty
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "counting graph automorphisms needs pynauty: pip install 'fractalkit[graphs]' "
            "(or pip install pynauty)"
        ) from err
    return pynauty


def log_automorphisms(graph: Graph) -> Tensor:
    """``log |Aut(G)|`` of each labelled graph (node types and edge types respected).

    Args:
        graph: a batch of N graphs (only existing nodes count).

    Returns:
        float64 ``[N]``, natural log of the automorphism group's order (0 for an asymmetric
        graph or one with at most one node).

    Raises:
        ImportError: if ``pynauty`` (the ``graphs`` extra) is not installed.
        TypeError: if ``graph`` is not a :class:`~fractalkit.graphs.Graph`.

    Example:
        >>> import torch
        >>> from fractalkit.graphs import Graph
        >>> star = torch.zeros(1, 4, 4, dtype=torch.long)
        >>> star[0, 0, 1:] = star[0, 1:, 0] = 1
        >>> g = Graph(torch.zeros(1, 4, dtype=torch.long), star, torch.ones(1, 4, dtype=torch.bool))
        >>> round(float(log_automorphisms(g).exp()))  # the 3 leaves permute freely
        6
    """
    if not isinstance(graph, Graph):
        raise TypeError(f"log_automorphisms: graph must be a fractalkit.graphs.Graph, got {type(graph)}")
    pynauty = _pynauty()
    types = graph.node_types.cpu().tolist()
    adj = graph.adjacency.cpu().tolist()
    sizes = graph.num_nodes.cpu().tolist()
    out = []
    for g, size in enumerate(sizes):
        if size <= 1:
            out.append(0.0)
            continue
        edges = [(u, v, adj[g][u][v]) for u in range(size) for v in range(u) if adj[g][u][v]]
        total = size + len(edges)
        links: dict[int, list[int]] = {i: [] for i in range(total)}
        colours: dict[tuple[str, int], set[int]] = {}
        for u in range(size):
            colours.setdefault(("node", int(types[g][u])), set()).add(u)
        for e, (u, v, b) in enumerate(edges):
            links[size + e] = [u, v]
            colours.setdefault(("edge", int(b)), set()).add(size + e)
        cells = [colours[key] for key in sorted(colours)]
        nauty_graph = pynauty.Graph(total, directed=False, adjacency_dict=links, vertex_coloring=cells)
        _, mantissa, exponent, _, _ = pynauty.autgrp(nauty_graph)
        out.append(math.log(mantissa) + exponent * math.log(10.0))
    return torch.tensor(out, dtype=torch.float64)
