"""Node orderings of graphs: canonical BFS, random BFS with its exact probability, uniform.

Shape letters: N graphs, n node slots (existing nodes first, as in :class:`~fractalkit.graphs.Graph`).

A :class:`~fractalkit.graphs.GraphEncoding` encodes a graph *in a node order*, so a model of
encodings is a model of (graph, order) pairs. Three ways to handle the order, each explicit:

- **canonical**: :func:`~fractalkit.graphs.bfs_order` from a chosen root (for molecules, the
  atom RDKit ranks first). One encoding per graph; ``log p(encoding)`` is then a *lower bound*
  on ``log p(graph)``, since the model may put mass on the graph's other encodings.
- **random-BFS augmentation**: :func:`random_bfs_order` draws a breadth-first order with a
  uniformly random root, uniformly random tie-breaks among each node's newly discovered
  neighbours, and a uniformly random start for each further component. Training on such
  orders (:func:`random_bfs_encodings`, a fresh order per example per step) teaches the model
  every BFS encoding of a graph instead of one.
- **marginalised**: ``p(graph) = sum over its distinct encodings of p(encoding)``, estimated by
  importance sampling over orders with the exact ``log q(order)`` that
  :func:`random_bfs_order` returns (see :func:`fractalkit.graphs.graph_log_likelihood`).

The random-BFS law ``q`` is exact and automorphism-invariant: an order is produced by exactly
one sequence of choices (the root; for each dequeued node, a permutation of its m newly
discovered neighbours; the start of each further component among the r unvisited nodes), so

    log q(order) = -log(size) - sum over dequeued nodes log(m!) - sum over further components log(r)

and relabelling a graph by one of its automorphisms maps BFS orders to BFS orders of equal
probability. Node types do not enter the search (only the presence of edges does).
"""

from __future__ import annotations

import math
import random
from collections import deque
from typing import Any

import torch
from torch import Tensor

from fractalkit.graphs.encoding import Graph, GraphEncoding
from fractalkit.validation import check_integer_tensor

__all__ = [
    "random_bfs_encodings",
    "random_bfs_log_prob",
    "random_bfs_order",
    "uniform_order",
]


def _neighbour_lists(graph: Graph) -> tuple[list[list[list[int]]], list[int]]:
    """Per graph, the sorted neighbour list of each existing node, and the node counts."""
    adj = (graph.adjacency != 0).cpu().tolist()
    sizes = graph.num_nodes.cpu().tolist()
    out = []
    for g, size in enumerate(sizes):
        out.append([[v for v in range(size) if adj[g][u][v]] for u in range(size)])
    return out, sizes


def _check_graph(where: str, graph: Any) -> None:
    if not isinstance(graph, Graph):
        raise TypeError(f"{where}: graph must be a fractalkit.graphs.Graph, got {type(graph).__name__}")


def _python_rng(generator: torch.Generator | None) -> random.Random:
    """A Python RNG seeded from ``generator`` (one int64 draw), so results follow its seed."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return random.Random(seed)


def random_bfs_order(graph: Graph, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Draw one random breadth-first node order per graph, with its exact log-probability.

    The root is uniform over the graph's nodes; when a node is dequeued, its unvisited
    neighbours are enqueued in a uniformly random order; when a component is exhausted, the
    next start is uniform over the unvisited nodes. Missing nodes keep their places at the end.

    Args:
        graph: a batch of N graphs with n node slots.
        generator: the random stream (CPU); the same seed gives the same orders.

    Returns:
        ``(orders, log_q)``: int64 ``[N, n]`` orders for :meth:`Graph.permute` (new node i is
        old node ``orders[g, i]``) and float64 ``[N]`` ``log q(order)`` in nats (0 for a graph
        with at most one node). :func:`random_bfs_log_prob` evaluates the same ``log q``.

    Example:
        >>> from fractalkit.graphs import Graph
        >>> path = Graph(torch.zeros(1, 3, dtype=torch.long),
        ...              torch.tensor([[[0, 1, 0], [1, 0, 1], [0, 1, 0]]]), torch.ones(1, 3, dtype=torch.bool))
        >>> orders, log_q = random_bfs_order(path, generator=torch.Generator().manual_seed(0))
        >>> orders.shape, log_q.dtype
        (torch.Size([1, 3]), torch.float64)
    """
    _check_graph("random_bfs_order", graph)
    rng = _python_rng(generator)
    neighbours, sizes = _neighbour_lists(graph)
    n = graph.node_types.shape[1]
    out, log_qs = [], []
    for nbrs, size in zip(neighbours, sizes, strict=True):
        seen = [False] * size
        order: list[int] = []
        log_q = 0.0
        while len(order) < size:
            unvisited = [v for v in range(size) if not seen[v]]
            start = rng.choice(unvisited)
            log_q -= math.log(len(unvisited))
            seen[start] = True
            queue = deque([start])
            while queue:
                u = queue.popleft()
                order.append(u)
                new = [v for v in nbrs[u] if not seen[v]]
                rng.shuffle(new)
                log_q -= math.lgamma(len(new) + 1)
                for v in new:
                    seen[v] = True
                queue.extend(new)
        out.append(order + list(range(size, n)))
        log_qs.append(log_q)
    orders = torch.tensor(out, dtype=torch.int64).view(len(sizes), n)
    return orders, torch.tensor(log_qs, dtype=torch.float64)


def random_bfs_log_prob(graph: Graph, orders: Tensor) -> Tensor:
    """``log q(order)`` under :func:`random_bfs_order`; ``-inf`` for an order BFS cannot produce.

    Args:
        graph: a batch of N graphs with n node slots.
        orders: int64 ``[N, n]``; new node i is old node ``orders[g, i]``. The first ``size``
            entries must be a permutation of the existing nodes (padding slots after them).

    Returns:
        float64 ``[N]`` log-probabilities in nats.

    Raises:
        TypeError: if ``graph`` is not a :class:`~fractalkit.graphs.Graph` or ``orders`` is not
            an integer tensor (float orders are not truncated).
        ValueError: if ``orders`` has the wrong shape or is not a permutation of the nodes.
    """
    _check_graph("random_bfs_log_prob", graph)
    n_graphs, n = graph.node_types.shape
    if isinstance(orders, Tensor):
        check_integer_tensor("random_bfs_log_prob", "orders", orders)
    if not isinstance(orders, Tensor) or tuple(orders.shape) != (n_graphs, n):
        raise ValueError(f"random_bfs_log_prob: orders must be [{n_graphs}, {n}], got {getattr(orders, 'shape', None)}")
    neighbours, sizes = _neighbour_lists(graph)
    out = []
    for g, (nbrs, size) in enumerate(zip(neighbours, sizes, strict=True)):
        order = orders[g, :size].tolist()
        if sorted(order) != list(range(size)):
            raise ValueError(f"random_bfs_log_prob: orders[{g}, :{size}] is not a permutation of the nodes")
        out.append(_bfs_log_prob_one(nbrs, order))
    return torch.tensor(out, dtype=torch.float64)


def _bfs_log_prob_one(nbrs: list[list[int]], order: list[int]) -> float:
    """Replay the BFS choices that ``order`` implies; -inf as soon as one is impossible."""
    size = len(order)
    seen = [False] * size
    log_q = 0.0
    pos = 0
    queue: deque[int] = deque()
    while pos < size:
        if not queue:  # a new component: its start must be unvisited (it is: a permutation)
            log_q -= math.log(size - pos)
            start = order[pos]
            if seen[start]:
                return -math.inf
            seen[start] = True
            queue.append(start)
        u = queue.popleft()
        if order[pos] != u:
            return -math.inf
        pos += 1
        new = {v for v in nbrs[u] if not seen[v]}
        # The next len(new) nodes enqueued are these, in the order they appear after the queue.
        enq_pos = pos + len(queue)
        block = order[enq_pos : enq_pos + len(new)]
        if set(block) != new:
            return -math.inf
        log_q -= math.lgamma(len(new) + 1)
        for v in block:
            seen[v] = True
        queue.extend(block)
    return log_q


def uniform_order(graph: Graph, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """A uniformly random permutation of each graph's nodes, with ``log q = -log(size!)``.

    Args:
        graph: a batch of N graphs with n node slots.
        generator: the random stream.

    Returns:
        ``(orders, log_q)``: int64 ``[N, n]`` (missing nodes stay at the end) and float64 ``[N]``.
    """
    _check_graph("uniform_order", graph)
    sizes = graph.num_nodes.cpu().tolist()
    n = graph.node_types.shape[1]
    out = []
    for size in sizes:
        perm = torch.randperm(size, generator=generator).tolist()
        out.append(perm + list(range(size, n)))
    log_q = torch.tensor([-math.lgamma(s + 1) for s in sizes], dtype=torch.float64)
    return torch.tensor(out, dtype=torch.int64).view(len(sizes), n), log_q


def random_bfs_encodings(
    encoding: GraphEncoding, graph: Graph, *, generator: torch.Generator | None = None
) -> Tensor:
    """Training-time augmentation: encode each graph in a fresh random BFS order.

    Call it on every batch (a new order per example per step) to train on all BFS encodings of
    a graph instead of one canonical encoding.

    Args:
        encoding: the :class:`~fractalkit.graphs.GraphEncoding`.
        graph: a batch of N graphs.
        generator: the random stream.

    Returns:
        int64 ``[N, n * W]`` encodings.
    """
    if not isinstance(encoding, GraphEncoding):
        raise TypeError(f"random_bfs_encodings: encoding must be a GraphEncoding, got {type(encoding).__name__}")
    orders, _ = random_bfs_order(graph, generator=generator)
    return encoding.encode(graph.permute(orders))
