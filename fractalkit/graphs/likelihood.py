"""Graph-level likelihoods of a model over :class:`~fractalkit.graphs.GraphEncoding` encodings.

Shape letters: N graphs, n node slots, K sampled orders, E = n * W encoding elements.

A model of encodings places mass ``p(E)`` on every encoding tensor. A graph G with ``size``
nodes has ``size! / |Aut(G)|`` distinct encodings (one per node order, orders that differ by an
automorphism giving the same tensor), and

    p(G) = sum over the distinct encodings E of G of p(E).

Two figures follow, each labelled for what it is:

- the **canonical bound** ``log p(E_canonical)``: the graph encoded in the order it is given
  (e.g. :func:`~fractalkit.graphs.bfs_order`); since p(G) >= p(one encoding), it is a lower
  bound on log p(G), loose by the log of the mass the model puts on G's other encodings;
- the **importance-sampled estimate** over orders: draw ``pi_k ~ q`` (K orders), and average
  ``p(E(pi_k)) / q(E(pi_k))`` with ``q(E) = |Aut(G)| q(pi)`` for an automorphism-invariant q,
  counting the canonical encoding's own mass exactly (see :func:`graph_log_likelihood`).
  With ``ordering="bfs"`` (:func:`~fractalkit.graphs.random_bfs_order`) it estimates, without
  bias, the mass on G's *BFS encodings* (those a breadth-first search can produce), which is
  <= p(G) (the model may put mass on non-BFS encodings); by Jensen its log is in expectation a
  lower bound on that mass's log, and hence on log p(G). With ``ordering="uniform"``
  (:func:`~fractalkit.graphs.uniform_order`) every encoding has ``q > 0`` and the estimate is
  unbiased for p(G) itself, at a much larger variance for a model trained on BFS orders.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from fractalkit.graphs.automorphisms import log_automorphisms
from fractalkit.graphs.encoding import Graph, GraphEncoding
from fractalkit.graphs.orders import random_bfs_log_prob, random_bfs_order, uniform_order
from fractalkit.validation import check_count

__all__ = ["GraphLogLikelihood", "graph_log_likelihood", "graph_log_likelihood_exact"]

Ordering = Literal["bfs", "uniform"]


@dataclass(frozen=True)
class GraphLogLikelihood:
    """What :func:`graph_log_likelihood` measured, per graph, in nats.

    Attributes:
        canonical_bound: float64 ``[N]``: ``log p(encoding in the given order)``, a lower bound
            on ``log p(G)``.
        log_p: float64 ``[N]``: ``log`` of the importance-sampled estimate (see ``estimates``).
        stderr: float64 ``[N]``: standard error of ``log_p`` by the delta method,
            ``sd(w) / (sqrt(K) (p(E_c) + mean(w)))`` over the K importance weights (NaN for
            K = 1).
        ess: float64 ``[N]``: effective sample size ``(sum w)^2 / sum w^2`` of the K weights
            (0 when every draw was the canonical encoding).
        log_automorphisms: float64 ``[N]``: ``log |Aut(G)|`` (labelled).
        num_orders: K.
        ordering: ``"bfs"`` or ``"uniform"``.
        model_kind: the kind of the model's ``log_prob`` (``"exact"`` unless the model gives a
            bound or an estimate for an encoding, which then carries over).
        estimates: one sentence saying what ``log_p`` estimates.
    """

    canonical_bound: Tensor
    log_p: Tensor
    stderr: Tensor
    ess: Tensor
    log_automorphisms: Tensor
    num_orders: int
    ordering: str
    model_kind: str
    estimates: str


_ESTIMATES = {
    "bfs": "log of the model's mass on the graph's BFS encodings plus its canonical encoding "
    "(p(E_c) + mean of the other draws' weights: unbiased in p, never below the canonical bound; "
    "its log is low in expectation, by Jensen; mass on non-BFS encodings is not counted, so it "
    "is a lower bound on log p(G))",
    "uniform": "log p(G), the mass on all the graph's encodings (p(E_c) + mean of the other "
    "draws' weights: unbiased in p; its log is low in expectation, by Jensen)",
}


def _orders(graph: Graph, ordering: str, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    if ordering == "bfs":
        return random_bfs_order(graph, generator=generator)
    if ordering == "uniform":
        return uniform_order(graph, generator=generator)
    raise ValueError(f"graph_log_likelihood: ordering must be 'bfs' or 'uniform', got {ordering!r}")


@torch.no_grad()
def _score(model: Any, x: Tensor, batch_size: int, kwargs: dict[str, Any]) -> tuple[Tensor, str]:
    """log p of encodings ``[M, E]`` in float64 ``[M]``, in batches, and the score's kind."""
    device = next(model.parameters()).device
    values, kinds = [], set()
    for i in range(0, x.shape[0], batch_size):
        lp = model.log_prob(x[i : i + batch_size].to(device), **kwargs)
        values.append(lp.value.detach().double().cpu())
        kinds.add(lp.kind)
    kind = kinds.pop() if len(kinds) == 1 else "mixed"
    return torch.cat(values) if values else torch.zeros(0, dtype=torch.float64), kind


def _slice(graph: Graph, start: int, stop: int) -> Graph:
    """Graphs ``start:stop`` of the batch."""
    return Graph(graph.node_types[start:stop], graph.adjacency[start:stop], graph.node_mask[start:stop])


def _check(
    encoding: GraphEncoding, graph: Graph, where: str, batch_size: Any, log_prob_kwargs: Any
) -> int:
    """Check the shared arguments; returns ``batch_size`` as an int."""
    batch_size = check_count(where, "batch_size", batch_size)
    if log_prob_kwargs is not None and not isinstance(log_prob_kwargs, dict):
        raise TypeError(
            f"{where}: log_prob_kwargs must be a dict of keyword arguments for model.log_prob "
            f"(e.g. {{'orders': 'identity'}}) or None, got {type(log_prob_kwargs).__name__}"
        )
    if not isinstance(encoding, GraphEncoding):
        raise TypeError(f"{where}: encoding must be a GraphEncoding, got {type(encoding)}")
    if not isinstance(graph, Graph):
        raise TypeError(f"{where}: graph must be a fractalkit.graphs.Graph, got {type(graph)}")
    if graph.node_types.shape[1] > encoding.max_nodes:
        raise ValueError(
            f"{where}: graphs have {graph.node_types.shape[1]} node slots > the encoding's "
            f"max_nodes={encoding.max_nodes}"
        )
    return batch_size


def graph_log_likelihood(
    model: Any,
    encoding: GraphEncoding,
    graph: Graph,
    *,
    num_orders: int = 32,
    ordering: Ordering = "bfs",
    generator: torch.Generator | None = None,
    batch_size: int = 1024,
    log_prob_kwargs: dict[str, Any] | None = None,
    graph_batch: int = 512,
) -> GraphLogLikelihood:
    """The canonical-encoding bound and an importance-sampled estimate of log p(graph).

    For each graph, K orders ``pi_k ~ q`` (``ordering``), their encodings ``E_k``, and the
    weights ``w_k = p(E_k) / (|Aut(G)| q(pi_k))``, set to 0 where ``E_k`` is the canonical
    encoding ``E_c`` (the graph in the order given), whose mass is added exactly:

        log_p = log( p(E_c) + mean_k w_k ).

    This is unbiased for the mass on ``{E_c}`` and the other encodings q can draw, and never
    below the canonical bound (a plain ``mean_k w_k`` falls far below it when the model
    concentrates on ``E_c``, which q rarely draws). With ``"bfs"`` and a BFS canonical order
    (:func:`~fractalkit.graphs.bfs_order`) that is the model's mass on G's BFS encodings, a
    lower bound on p(G) (the model may put mass on non-BFS encodings); with ``"uniform"``,
    p(G) itself. By Jensen, ``log_p`` is low in expectation. The standard error reflects the
    drawn weights only: a mode that q never draws is invisible to it.

    Args:
        model: a :class:`fractalkit.Fractal` (anything with ``log_prob(x, **kw).value`` and
            ``parameters()``) over ``encoding.event_shape``.
        encoding: the :class:`~fractalkit.graphs.GraphEncoding` the model was trained on.
        graph: N graphs with at most ``encoding.max_nodes`` node slots, *in their canonical
            order* (the order the canonical bound is scored in).
        num_orders: K >= 1, orders drawn per graph.
        ordering: ``"bfs"`` (random BFS) or ``"uniform"`` (uniform permutations).
        generator: the random stream of the orders.
        batch_size: encodings per ``log_prob`` call.
        log_prob_kwargs: passed to ``model.log_prob`` (e.g. ``{"orders": "identity"}`` for a
            model with MAR levels, whose likelihood is exact only under given orders).
        graph_batch: graphs handled at a time (each needs K + 1 encodings in memory).

    Returns:
        A :class:`GraphLogLikelihood` of float64 ``[N]`` tensors (nats).

    Raises:
        TypeError: if ``encoding``, ``graph`` or ``log_prob_kwargs`` has the wrong type, or a
            count is not an integer.
        ValueError: if ``num_orders``, ``batch_size`` or ``graph_batch`` is below 1,
            ``ordering`` is unknown, the batch is empty, or the graphs are larger than the
            encoding.
        ImportError: if ``pynauty`` (the ``graphs`` extra) is missing.
    """
    where = "graph_log_likelihood"
    batch_size = _check(encoding, graph, where, batch_size, log_prob_kwargs)
    if isinstance(num_orders, bool) or not isinstance(num_orders, int) or num_orders < 1:
        raise ValueError(f"{where}: num_orders must be a positive int, got {num_orders!r}")
    if ordering not in _ESTIMATES:
        raise ValueError(f"{where}: ordering must be 'bfs' or 'uniform', got {ordering!r}")
    if isinstance(graph_batch, bool) or not isinstance(graph_batch, int) or graph_batch < 1:
        raise ValueError(f"{where}: graph_batch must be a positive int, got {graph_batch!r}")
    if len(graph) == 0:
        raise ValueError(f"{where}: the batch holds no graphs (N = 0); pass at least one graph")
    kwargs = dict(log_prob_kwargs or {})
    if len(graph) > graph_batch:  # bound the memory: (K + 1) encodings per graph at a time
        parts = [
            graph_log_likelihood(
                model, encoding, _slice(graph, i, i + graph_batch), num_orders=num_orders,
                ordering=ordering, generator=generator, batch_size=batch_size,
                log_prob_kwargs=kwargs, graph_batch=graph_batch,
            )
            for i in range(0, len(graph), graph_batch)
        ]
        kinds = {p.model_kind for p in parts}
        fields = ("canonical_bound", "log_p", "stderr", "ess", "log_automorphisms")
        return GraphLogLikelihood(
            *(torch.cat([getattr(p, f) for p in parts]) for f in fields),
            num_orders=num_orders,
            ordering=ordering,
            model_kind=kinds.pop() if len(kinds) == 1 else "mixed",
            estimates=_ESTIMATES[ordering],
        )
    n_graphs = len(graph)
    log_aut = log_automorphisms(graph)  # [N]
    encodings, log_qs = [encoding.encode(graph)], []
    for _ in range(num_orders):
        orders, log_q = _orders(graph, ordering, generator)
        encodings.append(encoding.encode(graph.permute(orders)))
        log_qs.append(log_q)
    scores, kind = _score(model, torch.cat(encodings), batch_size, kwargs)
    scores = scores.view(num_orders + 1, n_graphs)
    canonical, lp = scores[0], scores[1:]  # [N], [K, N]
    stacked = torch.stack(encodings[1:])  # [K, N, E]
    is_canonical = (stacked == encodings[0][None]).all(-1)  # [K, N]
    log_w = lp - log_aut[None] - torch.stack(log_qs)  # [K, N]
    log_w = log_w.masked_fill(is_canonical, -math.inf)  # the canonical encoding is counted exactly
    # p_hat = p(E_c) + mean_k w_k, in log space with one shift per graph
    shift = torch.maximum(canonical, log_w.max(0).values)  # [N]
    r = (log_w - shift).exp()  # [K, N]
    total = (canonical - shift).exp() + r.mean(0)  # [N], >= p(E_c) / exp(shift)
    log_p = total.log() + shift
    if num_orders > 1:
        stderr = r.std(0) / (math.sqrt(num_orders) * total)
    else:
        stderr = torch.full((n_graphs,), math.nan, dtype=torch.float64)
    ess = torch.where(r.sum(0) > 0, r.sum(0) ** 2 / (r**2).sum(0).clamp(min=1e-300), torch.zeros_like(total))
    return GraphLogLikelihood(
        canonical_bound=canonical,
        log_p=log_p,
        stderr=stderr,
        ess=ess,
        log_automorphisms=log_aut,
        num_orders=num_orders,
        ordering=ordering,
        model_kind=kind,
        estimates=_ESTIMATES[ordering],
    )


def graph_log_likelihood_exact(
    model: Any,
    encoding: GraphEncoding,
    graph: Graph,
    *,
    ordering: Literal["all", "bfs"] = "all",
    max_nodes: int = 8,
    batch_size: int = 1024,
    log_prob_kwargs: dict[str, Any] | None = None,
) -> Tensor:
    """Exact ``log sum_E p(E)`` over a small graph's distinct encodings, by enumerating orders.

    Enumerates all ``size!`` node orders (so only for tiny graphs: the reference the
    importance-sampled estimate is tested against).

    Args:
        model, encoding, graph, batch_size, log_prob_kwargs: as in :func:`graph_log_likelihood`.
        ordering: ``"all"``: every encoding (log p(G)); ``"bfs"``: only the encodings of orders
            a BFS can produce (what :func:`graph_log_likelihood` with ``"bfs"`` estimates).
        max_nodes: refuse graphs with more nodes than this (``size!`` orders each).

    Returns:
        float64 ``[N]`` in nats.

    Raises:
        ValueError: if a graph has more than ``max_nodes`` nodes, ``ordering`` is unknown, or
            ``batch_size`` is below 1.
        TypeError: as :func:`graph_log_likelihood`, and for a ``max_nodes`` that is not an int.
    """
    where = "graph_log_likelihood_exact"
    batch_size = _check(encoding, graph, where, batch_size, log_prob_kwargs)
    max_nodes = check_count(where, "max_nodes", max_nodes, minimum=0)
    if ordering not in ("all", "bfs"):
        raise ValueError(f"{where}: ordering must be 'all' or 'bfs', got {ordering!r}")
    sizes = graph.num_nodes.tolist()
    if sizes and max(sizes) > max_nodes:
        raise ValueError(f"{where}: a graph has {max(sizes)} nodes > max_nodes={max_nodes} ({max(sizes)}! orders)")
    n = graph.node_types.shape[1]
    out = []
    for g, size in enumerate(sizes):
        one = Graph(graph.node_types[g : g + 1], graph.adjacency[g : g + 1], graph.node_mask[g : g + 1])
        perms = torch.tensor(
            [list(p) + list(range(size, n)) for p in itertools.permutations(range(size))], dtype=torch.int64
        ).view(-1, n)
        many = Graph(*(t.expand(perms.shape[0], *t.shape[1:]) for t in (one.node_types, one.adjacency, one.node_mask)))
        if ordering == "bfs":
            keep = random_bfs_log_prob(many, perms) > -math.inf
            perms = perms[keep]
            many = Graph(*(t[: perms.shape[0]] for t in (many.node_types, many.adjacency, many.node_mask)))
        x = torch.unique(encoding.encode(many.permute(perms)), dim=0)  # distinct encodings
        lp, _ = _score(model, x, batch_size, dict(log_prob_kwargs or {}))
        out.append(float(torch.logsumexp(lp, 0)))
    return torch.tensor(out, dtype=torch.float64)
