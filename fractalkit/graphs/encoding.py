"""Graphs as fixed-shape integer tensors: :class:`Graph`, :func:`bfs_order`, :class:`GraphEncoding`.

Shape letters: N graphs, n = ``max_nodes`` (the padded node count), W = ``row_width`` (n for a
whole graph: one node-type slot plus n - 1 edge slots), A node types, B edge types,
V = ``max(A, B) + 1`` values per element, k subsets, s = n / k nodes per subset.

A fractal's levels call ``partitioner.split`` on integer tensors ``[N, *event_shape]``, so a
graph enters fractalkit through an *encoding*: :class:`GraphEncoding` turns a :class:`Graph`
(padded node types, a dense symmetric edge-type adjacency, a node mask) into one row per node,

    row i = [type_i + 1, edge(i, 0), edge(i, 1), ..., edge(i, i - 1), 0, ..., 0]   (W entries)

and concatenates the rows: ``[N, n * W]`` in ``[0, V)``. Value 0 of a type slot is "no node":
the rows after a graph's last node are all zeros, so the number of nodes is modelled by the
first zero type (an end token). Edge values are stored as they are in the adjacency (0 = no
edge, 1..B an edge or bond type). Entries
``j >= i`` of row i are structural zeros (an edge to a later node is stored in that node's row),
so every edge appears exactly once and the adjacency is symmetric by construction.

:class:`~fractalkit.partition.GraphSubsets` (the partitioner, in :mod:`fractalkit.partition`)
cuts such an encoding into k subsets of consecutive nodes (whole rows).
Child j carries its nodes' types and their edges to *every* earlier node (in earlier subsets
or earlier in its own subset), so with an autoregressive level over the subsets the chain rule
``log p(G) = sum_j log p(subset_j | subsets < j)`` is exact, and ``merge(split(x)) == x``. A
subset is again a node-row encoding (s rows of width W), so GraphSubsets nests: 9 nodes -> 3
subsets of 3 -> 3 single nodes -> (a :class:`~fractalkit.SequenceChunks` of chunk 1) the node's
W elements -> a categorical leaf. :meth:`GraphEncoding.partitioners` builds that chain.

The model places probability on every tensor in ``[0, V)^(n W)``, including ones that are not
graphs (a non-zero structural slot, an edge to a missing node, a value above A or B):
:meth:`GraphEncoding.decode` reports those with ``valid == False`` instead of repairing them.
With a slot-kinds leaf (``SlotCategoricalLeafConfig(**encoding.slot_kinds_config())``) the
structural zeros and the values above A or B get no probability, and the leaf knows which kind
of slot it fills.
"""

from __future__ import annotations

import numbers
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fractalkit.partition.base import Partitioner, _positive_int
from fractalkit.partition.chunks import SequenceChunks
from fractalkit.partition.graph import GraphSubsets
from fractalkit.validation import check_integer_tensor

__all__ = ["Graph", "GraphEncoding", "bfs_order"]


@dataclass(frozen=True)
class Graph:
    """A batch of small graphs as padded tensors.

    Node ``i`` of graph ``g`` exists when ``node_mask[g, i]``; existing nodes come first (the mask
    is a prefix of True values). Edge types sit in a dense adjacency, 0 meaning "no edge".

    Attributes:
        node_types: int64 ``[N, n]``, node types in ``[0, A)``; 0 where a node does not exist.
        adjacency: int64 ``[N, n, n]``, symmetric, zero diagonal, ``0`` no edge, ``1..B`` the
            edge type; zero in rows and columns of missing nodes.
        node_mask: bool ``[N, n]``, True for existing nodes, a prefix of each row.

    Raises:
        TypeError: if a field is not a tensor.
        ValueError: if the shapes do not agree (the values are checked by
            :meth:`GraphEncoding.encode`).
    """

    node_types: Tensor
    adjacency: Tensor
    node_mask: Tensor

    def __post_init__(self) -> None:
        for name in ("node_types", "adjacency", "node_mask"):
            if not isinstance(getattr(self, name), Tensor):
                raise TypeError(f"Graph: {name} must be a torch.Tensor, got {type(getattr(self, name))}")
        t, a, m = self.node_types, self.adjacency, self.node_mask
        if t.dim() != 2 or m.shape != t.shape or a.shape != (*t.shape, t.shape[1]):
            raise ValueError(
                "Graph: expected node_types [N, n], adjacency [N, n, n] and node_mask [N, n], got "
                f"{list(t.shape)}, {list(a.shape)} and {list(m.shape)}"
            )

    @property
    def num_nodes(self) -> Tensor:
        """int64 ``[N]``: nodes per graph."""
        return self.node_mask.long().sum(-1)

    def __len__(self) -> int:
        return int(self.node_types.shape[0])

    def permute(self, order: Tensor) -> Graph:
        """The same graphs with their nodes renumbered.

        Args:
            order: int64 ``[N, n]``; new node ``i`` of graph ``g`` is old node ``order[g, i]``.

        Returns:
            A :class:`Graph` with ``node_types[g, i] = old[g, order[g, i]]`` and the adjacency
            permuted on both axes (the caller keeps existing nodes first).

        Raises:
            TypeError: ``order`` is not an integer tensor.
            ValueError: ``order`` is not ``[N, n]`` or holds entries outside ``[0, n)``.
        """
        idx = check_integer_tensor("Graph.permute", "order", order).to(self.node_types.device).long()
        n_graphs, n = self.node_types.shape
        if tuple(idx.shape) != (n_graphs, n) or (idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n)):
            raise ValueError(
                f"Graph.permute: order must be int64 [N={n_graphs}, n={n}] with entries in [0, {n}), "
                f"got shape {list(idx.shape)}"
                + (f" with entries in [{int(idx.min())}, {int(idx.max())}]" if idx.numel() else "")
            )
        types = self.node_types.gather(1, idx)
        mask = self.node_mask.gather(1, idx)
        rows = self.adjacency.gather(1, idx[:, :, None].expand_as(self.adjacency))
        adj = rows.gather(2, idx[:, None, :].expand_as(self.adjacency))
        return Graph(types, adj, mask)


def bfs_order(graph: Graph, root: Tensor | int = 0) -> Tensor:
    """A canonical breadth-first node order for every graph in the batch.

    The search starts at ``root`` (a node index, or int64 ``[N]`` one per graph; for molecules,
    the atom that RDKit ranks first canonically) and visits a node's unvisited neighbours in
    increasing index of the *given* order; a disconnected graph continues with the lowest
    unvisited node. Missing nodes keep their places at the end. In BFS order every node after
    the first in its component has an edge to an earlier node, which keeps the encoding's edges
    close to the diagonal.

    Args:
        graph: the batch.
        root: the start node, an int or int64 ``[N]``; must be an existing node.

    Returns:
        int64 ``[N, n]`` orders for :meth:`Graph.permute` (on the CPU).

    Raises:
        ValueError: if a root is not an existing node of its graph, or a root tensor's shape
            is not ``[]`` or ``[N]``.
        TypeError: a float, bool or non-integer root.
    """
    if not isinstance(graph, Graph):
        raise TypeError(f"bfs_order: graph must be a fractalkit.graphs.Graph, got {type(graph).__name__}")
    n_graphs, n = graph.node_types.shape
    if isinstance(root, Tensor):
        check_integer_tensor("bfs_order", "root", root)
        if root.dim() > 1 or (root.dim() == 1 and root.shape[0] != n_graphs):
            raise ValueError(
                f"bfs_order: root must be an int or an int64 tensor [N={n_graphs}] (one per graph), "
                f"got shape {list(root.shape)}"
            )
    elif isinstance(root, bool) or not isinstance(root, numbers.Integral):
        raise TypeError(f"bfs_order: root must be an int or an int64 tensor [N], got {root!r} ({type(root).__name__})")
    roots = torch.as_tensor(root, dtype=torch.int64).expand(n_graphs).tolist()
    adj = (graph.adjacency != 0).cpu().tolist()
    sizes = graph.num_nodes.cpu().tolist()
    out = []
    for g in range(n_graphs):
        size, r = sizes[g], roots[g]
        if size and not 0 <= r < size:
            raise ValueError(f"bfs_order: root {r} of graph {g} is not one of its {size} nodes")
        seen = [False] * size
        order: list[int] = []
        for start in ([r] if size else []) + list(range(size)):
            if seen[start]:
                continue
            seen[start] = True
            queue = deque([start])
            while queue:
                u = queue.popleft()
                order.append(u)
                for v in range(size):
                    if adj[g][u][v] and not seen[v]:
                        seen[v] = True
                        queue.append(v)
        out.append(order + list(range(size, n)))
    return torch.tensor(out, dtype=torch.int64).view(n_graphs, n)


class GraphEncoding:
    """Flattens graphs with up to ``max_nodes`` nodes into fixed-shape integer tensors and back.

    See the module docstring for the layout: n rows of W = n entries, row i holding node i's
    type + 1 (0: no node) and its edge types to nodes ``0..i-1``; flattened to ``[N, n * n]``.
    Of these ``n * n`` elements, ``n + n (n - 1) / 2`` carry information (``num_free_elements``);
    the rest are structural zeros that a trained model learns to emit with probability ~1.

    Args:
        max_nodes: n, the largest graph.
        num_node_types: A.
        num_edge_types: B (edge values ``1..B``; 0 is "no edge").

    Raises:
        ValueError: if a size is not a positive int.

    Example:
        >>> enc = GraphEncoding(max_nodes=3, num_node_types=2, num_edge_types=2)
        >>> enc.event_shape, enc.num_values
        ((9,), 3)
    """

    def __init__(self, max_nodes: int, num_node_types: int, num_edge_types: int) -> None:
        name = type(self).__name__
        self.max_nodes = _positive_int(name, "max_nodes", max_nodes)
        self.num_node_types = _positive_int(name, "num_node_types", num_node_types)
        self.num_edge_types = _positive_int(name, "num_edge_types", num_edge_types)

    @property
    def row_width(self) -> int:
        """W = n: one type slot and n - 1 edge slots per node."""
        return self.max_nodes

    @property
    def event_shape(self) -> tuple[int]:
        """``(n * W,)``: the shape of one encoded graph."""
        return (self.max_nodes * self.row_width,)

    @property
    def num_values(self) -> int:
        """V = max(A, B) + 1: the value range every element shares (the leaf's V)."""
        return max(self.num_node_types, self.num_edge_types) + 1

    @property
    def num_free_elements(self) -> int:
        """Elements that carry information: n type slots and n (n - 1) / 2 edge slots."""
        n = self.max_nodes
        return n + n * (n - 1) // 2

    def structural_mask(self, device: torch.device | str | None = None) -> Tensor:
        """bool ``[n * W]``: True at the free slots, False at the structural zeros."""
        n = self.max_nodes
        i = torch.arange(n, device=device)[:, None]
        c = torch.arange(self.row_width, device=device)[None, :]
        return (c <= i).reshape(-1)  # slot c of row i: the type (c = 0) or edge(i, c - 1), c - 1 < i

    #: slot kinds of :meth:`element_kinds`
    NODE_SLOT, EDGE_SLOT, STRUCTURAL_ZERO = 0, 1, 2

    def element_kinds(self) -> tuple[int, ...]:
        """The kind of each of the ``n * W`` elements: 0 a node-type slot, 1 an edge slot,
        2 a structural zero (see :class:`fractalkit.leaves.slots.SlotKinds`)."""
        n = self.max_nodes
        c = torch.arange(self.row_width)[None, :].expand(n, -1)
        i = torch.arange(n)[:, None].expand(-1, self.row_width)
        kinds = torch.where(c == 0, self.NODE_SLOT, torch.where(c <= i, self.EDGE_SLOT, self.STRUCTURAL_ZERO))
        return tuple(kinds.reshape(-1).tolist())

    def allowed_values(self) -> tuple[tuple[int, ...], ...]:
        """Per slot kind, its values: node slots ``0..A`` (0: no node), edge slots ``0..B``,
        structural zeros ``0``."""
        return (
            tuple(range(self.num_node_types + 1)),
            tuple(range(self.num_edge_types + 1)),
            (0,),
        )

    def slot_kinds_config(self) -> dict[str, Any]:
        """Keyword arguments of :class:`fractalkit.leaves.slots.SlotCategoricalLeafConfig` for
        this encoding: ``num_values``, ``element_kinds`` and ``allowed_values``.

        A leaf built from them puts no probability on structural zeros or on values above A
        (node slots) or B (edge slots): the model is a distribution over the tensors that
        :meth:`decode` can read, up to the end-token rules (a node after the end token, or an
        edge to a missing node, keeps some probability).
        """
        return {
            "num_values": self.num_values,
            "element_kinds": self.element_kinds(),
            "allowed_values": self.allowed_values(),
        }

    def partitioners(self, subsets: tuple[int, ...] = ()) -> list[Partitioner]:
        """The chain of partitioners from a whole graph down to single elements.

        Args:
            subsets: k per graph level, top first: ``(3, 3)`` cuts 9 nodes into 3 subsets of
                3 nodes, then each subset into 3 single nodes. The last level must reach single
                nodes (its nodes per subset must be 1); ``()`` starts from single nodes.

        Returns:
            ``[GraphSubsets, ..., SequenceChunks(W, 1)]``: pair each with a level config; the
            last hands single elements (shape ``(1,)``) to the leaf.

        Raises:
            ValueError: if the subsets do not divide the nodes down to one node each.
        """
        parts: list[Partitioner] = []
        nodes = self.max_nodes
        for k in tuple(subsets) or (self.max_nodes,):
            parts.append(GraphSubsets(nodes, self.row_width, k))
            nodes //= k
        if nodes != 1:
            raise ValueError(
                f"GraphEncoding.partitioners: subsets {tuple(subsets)} leave {nodes} nodes per "
                f"child of the last graph level; their product must be max_nodes={self.max_nodes}"
            )
        parts.append(SequenceChunks(self.row_width, 1))
        return parts

    def encode(self, graph: Graph) -> Tensor:
        """Encode a batch of graphs (in the node order given; see :func:`bfs_order`).

        Args:
            graph: a :class:`Graph` with ``n <= max_nodes`` node slots (padded up to n).

        Returns:
            int64 ``[N, n * W]`` with values in ``[0, V)``.

        Raises:
            TypeError: if a field has the wrong dtype.
            ValueError: if the graph has too many nodes, the mask is not a prefix (padding only
                after the last node), the adjacency is not symmetric with a zero diagonal, an
                edge touches a missing node, or a type is out of range.
        """
        t, a, m = graph.node_types, graph.adjacency, graph.node_mask
        if t.dtype.is_floating_point or a.dtype.is_floating_point or t.dtype == torch.bool:
            raise TypeError("GraphEncoding.encode: node_types and adjacency must be integer tensors")
        if m.dtype != torch.bool:
            raise TypeError(f"GraphEncoding.encode: node_mask must be bool, got {m.dtype}")
        n_graphs, slots = t.shape
        n = self.max_nodes
        if slots > n:
            raise ValueError(f"GraphEncoding.encode: graphs have {slots} node slots > max_nodes={n}")
        if slots < n:  # pad up to n
            t = torch.cat([t, t.new_zeros(n_graphs, n - slots)], 1)
            m = torch.cat([m, m.new_zeros(n_graphs, n - slots)], 1)
            a = torch.nn.functional.pad(a, (0, n - slots, 0, n - slots))
        t, a = t.long(), a.long()
        if bool((m[:, 1:] & ~m[:, :-1]).any()):
            raise ValueError("GraphEncoding.encode: node_mask must be a prefix (padding after the end)")
        if not torch.equal(a, a.transpose(1, 2)):
            raise ValueError("GraphEncoding.encode: adjacency must be symmetric")
        if bool(a.diagonal(dim1=1, dim2=2).any()):
            raise ValueError("GraphEncoding.encode: adjacency must have a zero diagonal (no self-loops)")
        pair = m[:, :, None] & m[:, None, :]
        if bool((a[~pair] != 0).any()):
            raise ValueError("GraphEncoding.encode: an edge touches a node that node_mask marks missing")
        if bool(((t < 0) | (t >= self.num_node_types))[m].any()):
            raise ValueError(f"GraphEncoding.encode: node types must lie in [0, {self.num_node_types})")
        if bool(((a < 0) | (a > self.num_edge_types)).any()):
            raise ValueError(f"GraphEncoding.encode: edge types must lie in [0, {self.num_edge_types}]")
        types = torch.where(m, t + 1, torch.zeros_like(t))  # [N, n], 0 = no node
        lower = torch.ones(n, n, dtype=torch.bool, device=a.device).tril(-1)  # j < i
        edges = torch.where(lower, a, torch.zeros_like(a))[:, :, : n - 1]  # [N, n, n - 1]
        return torch.cat([types[:, :, None], edges], 2).reshape(n_graphs, n * n)  # [N, n * W]

    def decode(self, x: Tensor, *, strict: bool = False) -> tuple[Graph, Tensor]:
        """Decode encodings (a model's samples) into graphs, flagging those that are not graphs.

        Args:
            x: integer ``[N, n * W]``.
            strict: raise on the first invalid encoding instead of flagging it.

        Returns:
            ``(graph, valid)``: a :class:`Graph` with n node slots and bool ``[N]``. An invalid
            encoding (a node after the end token, a non-zero structural slot or padding row, a
            type value above A or an edge value above B) is decoded as the *empty* graph (no
            nodes) with ``valid[g] == False``; nothing is repaired.

        Raises:
            TypeError, ValueError: if ``x`` is not an integer ``[N, n * W]`` tensor in ``[0, V)``;
                with ``strict``, if an encoding is invalid.
        """
        if not isinstance(x, Tensor) or x.dtype.is_floating_point or x.dtype == torch.bool:
            raise TypeError("GraphEncoding.decode: x must be an integer tensor")
        if x.dim() != 2 or tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(
                f"GraphEncoding.decode: expected x of shape [N, {self.event_shape[0]}], got {list(x.shape)}"
            )
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.num_values):
            raise ValueError(f"GraphEncoding.decode: values must lie in [0, {self.num_values})")
        n = self.max_nodes
        rows = x.long().view(-1, n, self.row_width)  # [N, n, W]
        types = rows[:, :, 0]  # [N, n]
        present = types > 0
        mask = present.cumprod(1).bool()  # nodes before the first end token
        structural = ~self.structural_mask(x.device).view(n, self.row_width)  # [n, W]
        bad = (present & ~mask).any(1)  # a node after the end
        bad |= (rows * structural).ne(0).any(2).any(1)  # an edge to a later node (or itself)
        bad |= (rows * (~mask)[:, :, None]).ne(0).any(2).any(1)  # a non-zero row after the end
        bad |= (types > self.num_node_types).any(1)
        bad |= (rows[:, :, 1:] > self.num_edge_types).any(2).any(1)
        if strict and bool(bad.any()):
            raise ValueError(
                f"GraphEncoding.decode: encodings {bad.nonzero().flatten().tolist()[:10]} are not graphs"
            )
        valid = ~bad
        mask = mask & valid[:, None]
        node_types = torch.where(mask, types - 1, torch.zeros_like(types))
        lower = torch.nn.functional.pad(rows[:, :, 1:], (0, 1))  # [N, n, n]: entry (i, j), j < i
        lower = lower * (valid[:, None, None] & mask[:, :, None] & mask[:, None, :])
        lower = lower.tril(-1)
        return Graph(node_types, lower + lower.transpose(1, 2), mask), valid

    def config(self) -> dict[str, Any]:
        """``{"max_nodes": n, "num_node_types": A, "num_edge_types": B}``."""
        return {
            "max_nodes": self.max_nodes,
            "num_node_types": self.num_node_types,
            "num_edge_types": self.num_edge_types,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"
