"""GraphEncoding and GraphSubsets: round trips, validity checks, and an exactly normalised fractal.

Shape letters: N graphs, n max nodes, W row width (= n), V values per element.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from fractalkit import ARLevelConfig, CategoricalLeafConfig, Fractal, MARLevelConfig
from fractalkit.graphs import Graph, GraphEncoding, bfs_order
from fractalkit.partition import (
    PARTITIONERS,
    GraphSubsets,
    SequenceChunks,
    partitioner_from_config,
)


def random_graphs(n_graphs: int, n: int, a: int, b: int, seed: int = 0) -> Graph:
    """Random graphs with 0..n nodes, A node types and B edge types (edge density 1/2)."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(0, n + 1, (n_graphs,), generator=g)
    mask = torch.arange(n)[None] < sizes[:, None]  # [N, n] prefix
    types = torch.randint(0, a, (n_graphs, n), generator=g) * mask
    edges = torch.randint(1, b + 1, (n_graphs, n, n), generator=g)
    edges = edges * (torch.rand(n_graphs, n, n, generator=g) < 0.5)
    lower = edges.tril(-1) * (mask[:, :, None] & mask[:, None, :])
    return Graph(types, lower + lower.transpose(1, 2), mask)


def same_graphs(x: Graph, y: Graph) -> bool:
    return (
        torch.equal(x.node_types, y.node_types)
        and torch.equal(x.adjacency, y.adjacency)
        and torch.equal(x.node_mask, y.node_mask)
    )


def test_encode_decode_round_trip():
    enc = GraphEncoding(max_nodes=6, num_node_types=4, num_edge_types=3)
    graphs = random_graphs(200, 6, 4, 3)
    x = enc.encode(graphs)
    assert x.shape == (200, 36) and x.dtype == torch.int64
    assert int(x.min()) >= 0 and int(x.max()) < enc.num_values
    # structural zeros are zero, free slots carry everything
    assert not bool(x[:, ~enc.structural_mask()].any())
    back, valid = enc.decode(x)
    assert bool(valid.all())
    assert same_graphs(back, graphs)
    assert torch.equal(back.num_nodes, graphs.num_nodes)


def test_layout_of_a_small_graph():
    # path 0 -(1)- 1 -(2)- 2, types (1, 0, 1)
    adj = torch.tensor([[0, 1, 0], [1, 0, 2], [0, 2, 0]])
    g = Graph(torch.tensor([[1, 0, 1]]), adj[None], torch.ones(1, 3, dtype=torch.bool))
    x = GraphEncoding(3, 2, 2).encode(g)
    # rows: [type+1, edge to 0, edge to 1]
    assert x.view(3, 3).tolist() == [[2, 0, 0], [1, 1, 0], [2, 0, 2]]


def test_encode_pads_smaller_graphs_and_batches_sizes_together():
    enc = GraphEncoding(max_nodes=5, num_node_types=2, num_edge_types=1)
    small = random_graphs(10, 3, 2, 1, seed=1)
    x = enc.encode(small)
    assert x.shape == (10, 25)
    back, valid = enc.decode(x)
    assert bool(valid.all())
    assert torch.equal(back.node_types[:, :3], small.node_types)
    assert not bool(back.node_mask[:, 3:].any())
    assert torch.equal(back.adjacency[:, :3, :3], small.adjacency)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("gap", "prefix"),
        ("asym", "symmetric"),
        ("loop", "diagonal"),
        ("dangling", "missing"),
        ("type", "node types"),
        ("edge", "edge types"),
    ],
)
def test_encode_rejects_invalid_graphs(edit: str, message: str):
    enc = GraphEncoding(max_nodes=4, num_node_types=2, num_edge_types=2)
    t = torch.zeros(1, 4, dtype=torch.int64)
    a = torch.zeros(1, 4, 4, dtype=torch.int64)
    m = torch.tensor([[True, True, True, False]])
    if edit == "gap":
        m = torch.tensor([[True, False, True, False]])
    elif edit == "asym":
        a[0, 1, 0] = 1
    elif edit == "loop":
        a[0, 1, 1] = 1
    elif edit == "dangling":
        a[0, 0, 3] = a[0, 3, 0] = 1
    elif edit == "type":
        t[0, 0] = 2
    elif edit == "edge":
        a[0, 0, 1] = a[0, 1, 0] = 3
    with pytest.raises(ValueError, match=message):
        enc.encode(Graph(t, a, m))


def test_graph_rejects_mismatched_shapes_and_encode_too_many_nodes():
    with pytest.raises(ValueError, match="adjacency"):
        Graph(torch.zeros(2, 3), torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="node_mask"):
        Graph(torch.zeros(2, 3), torch.zeros(2, 3, 3), [[True] * 3] * 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_nodes"):
        GraphEncoding(2, 1, 1).encode(random_graphs(2, 3, 1, 1))


def test_decode_flags_invalid_encodings_without_repairing():
    enc = GraphEncoding(max_nodes=3, num_node_types=1, num_edge_types=1)  # V = 2
    ok = torch.tensor([1, 0, 0, 1, 1, 0, 0, 0, 0])  # two nodes joined by an edge
    node_after_end = torch.tensor([1, 0, 0, 0, 0, 0, 1, 0, 0])
    structural = torch.tensor([1, 1, 0, 0, 0, 0, 0, 0, 0])  # node 0's edge slot to itself
    edge_after_end = torch.tensor([1, 0, 0, 0, 1, 0, 0, 0, 0])  # a missing node with an edge
    x = torch.stack([ok, node_after_end, structural, edge_after_end])
    graphs, valid = enc.decode(x)
    assert valid.tolist() == [True, False, False, False]
    assert graphs.num_nodes.tolist() == [2, 0, 0, 0]  # invalid ones: the empty graph
    assert not bool(graphs.adjacency[1:].any())
    with pytest.raises(ValueError, match="not graphs"):
        enc.decode(x, strict=True)
    # values above A (or B) are invalid when V exceeds them
    enc2 = GraphEncoding(max_nodes=2, num_node_types=1, num_edge_types=2)  # V = 3
    _, valid2 = enc2.decode(torch.tensor([[2, 0, 1, 2], [1, 0, 1, 2]]))
    assert valid2.tolist() == [False, True]
    with pytest.raises(ValueError, match="values"):
        enc2.decode(torch.tensor([[3, 0, 0, 0]]))


def test_bfs_order_is_breadth_first_and_keeps_padding_last():
    # star centred on node 3 plus an isolated node 4; node 5 is padding
    adj = torch.zeros(1, 6, 6, dtype=torch.int64)
    for u in (0, 1, 2):
        adj[0, 3, u] = adj[0, u, 3] = 1
    mask = torch.tensor([[True] * 5 + [False]])
    g = Graph(torch.arange(6)[None] % 2 * mask, adj, mask)
    order = bfs_order(g, root=3)
    assert order.tolist() == [[3, 0, 1, 2, 4, 5]]
    h = g.permute(order)
    assert h.node_mask.tolist() == mask.tolist()
    assert h.adjacency[0, 0, 1:4].tolist() == [1, 1, 1]  # the centre is now node 0
    enc = GraphEncoding(6, 2, 1)
    back, valid = enc.decode(enc.encode(h))
    assert bool(valid.all()) and same_graphs(back, h)
    with pytest.raises(ValueError, match="root"):
        bfs_order(g, root=5)


def test_graph_subsets_children_carry_nodes_and_their_earlier_edges():
    enc = GraphEncoding(max_nodes=6, num_node_types=2, num_edge_types=2)
    x = enc.encode(random_graphs(8, 6, 2, 2, seed=3))
    p = GraphSubsets(num_nodes=6, row_width=enc.row_width, subsets=3)
    children = p.split(x)
    assert children.shape == (8, 3, 12)
    assert torch.equal(p.merge(children), x)
    rows = x.view(8, 6, 6)
    for j in range(3):  # child j: whole rows of nodes 2j, 2j + 1
        assert torch.equal(children[:, j].view(8, 2, 6), rows[:, 2 * j : 2 * j + 2])
    assert partitioner_from_config(p.config()) == p
    assert PARTITIONERS["graph_subsets"] is GraphSubsets


def test_graph_subsets_rejects_bad_sizes():
    with pytest.raises(ValueError, match="subsets=4 does not divide num_nodes=6"):
        GraphSubsets(6, 6, 4)
    with pytest.raises(ValueError, match="row_width"):
        GraphSubsets(6, 0, 2)
    with pytest.raises(ValueError, match="product must be max_nodes"):
        GraphEncoding(6, 2, 2).partitioners((3,))


def test_partitioners_chain_reaches_single_elements():
    parts = GraphEncoding(9, 4, 3).partitioners((3, 3))
    assert [type(p) for p in parts] == [GraphSubsets, GraphSubsets, SequenceChunks]
    for above, below in itertools.pairwise(parts):
        assert above.child_shape == below.event_shape
    assert parts[0].event_shape == (81,) and parts[-1].child_shape == (1,)


def tiny_graph_fractal(level: str, num_classes: int) -> tuple[GraphEncoding, Fractal]:
    enc = GraphEncoding(max_nodes=3, num_node_types=2, num_edge_types=2)  # V = 3, 9 elements
    make = {
        "ar": lambda: ARLevelConfig(width=16, depth=1, heads=2, embed="table"),
        "mar": lambda: MARLevelConfig(width=16, depth=1, heads=2, embed="table"),
    }[level]
    parts = enc.partitioners()  # 3 single nodes -> 3 elements each
    torch.manual_seed(0)
    model = Fractal(
        [(p, make()) for p in parts],
        leaf=CategoricalLeafConfig(num_values=enc.num_values),
        num_classes=num_classes,
    ).double().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # far from uniform, so the sums below test something
        for prm in model.parameters():
            prm.add_(torch.randn(prm.shape, generator=g, dtype=prm.dtype) * 0.6)
    return enc, model


@pytest.mark.parametrize(
    ("level", "num_classes"),
    [
        ("ar", 0),
        pytest.param("ar", 2, marks=pytest.mark.slow),  # ~10 s each on 2 CPU cores
        pytest.param("mar", 0, marks=pytest.mark.slow),
    ],
)
def test_normalisation_over_every_encoding_of_tiny_graphs(level: str, num_classes: int):
    # Every tensor the model can emit: 3^9 = 19,683 encodings of graphs with <= 3 nodes, 2 node
    # and 2 edge types (valid graphs and the invalid ones decode flags).
    enc, model = tiny_graph_fractal(level, num_classes)
    x = torch.tensor(list(itertools.product(range(enc.num_values), repeat=9)))  # [3^9, 9]
    y = torch.ones(x.shape[0], dtype=torch.int64) if num_classes else None
    orders = "identity" if level == "mar" else None
    with torch.no_grad():
        lp = model.log_prob(x, y, orders=orders)
    assert lp.kind == "exact"
    total = torch.logsumexp(lp.value, 0).exp().item()
    assert abs(total - 1.0) < 1e-6
    _, valid = enc.decode(x)
    # 1 + 2 + 4 * 3 + 8 * 27 = 231 graphs: the valid encodings are exactly the graphs
    assert int(valid.sum()) == 1 + 2 + 2 * 2 * 3 + 2**3 * 3**3
    assert 0 < lp.value[valid].exp().sum().item() < 1


def test_samples_decode_to_graphs_or_are_flagged():
    enc, model = tiny_graph_fractal("ar", 0)
    with torch.no_grad():
        x = model.sample(num_samples=64, generator=torch.Generator().manual_seed(0))
    assert x.shape == (64, 9)
    graphs, valid = enc.decode(x)
    assert valid.dtype == torch.bool and valid.shape == (64,)
    # valid samples re-encode to themselves; invalid ones are the empty graph
    assert torch.equal(enc.encode(graphs)[valid], x[valid])
    assert not bool(graphs.node_mask[~valid].any())
