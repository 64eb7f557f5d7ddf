"""Node orderings with exact log q, |Aut(G)|, and the graph log-likelihood (bound, IS, exact).

Shape letters: N graphs, n node slots, K orders.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
import torch

from fractalkit import ARLevelConfig, CategoricalLeafConfig, Fractal
from fractalkit.graphs import (
    Graph,
    GraphEncoding,
    bfs_order,
    random_bfs_encodings,
    random_bfs_log_prob,
    random_bfs_order,
    uniform_order,
)
from fractalkit.testing import roughen

pynauty = pytest.importorskip("pynauty")

from fractalkit.graphs import (  # noqa: E402
    graph_log_likelihood,
    graph_log_likelihood_exact,
    log_automorphisms,
)


def make_graph(n: int, edges: list[tuple[int, int, int]], types: list[int] | None = None, slots: int | None = None) -> Graph:
    """One graph with n nodes, typed edges ``(u, v, b)``, padded to ``slots`` node slots."""
    slots = slots or n
    adj = torch.zeros(1, slots, slots, dtype=torch.int64)
    for u, v, b in edges:
        adj[0, u, v] = adj[0, v, u] = b
    t = torch.zeros(1, slots, dtype=torch.int64)
    if types is not None:
        t[0, :n] = torch.tensor(types)
    mask = torch.arange(slots)[None] < n
    return Graph(t, adj, mask)


GRAPHS = {
    "path4": make_graph(4, [(0, 1, 1), (1, 2, 1), (2, 3, 1)]),
    "star4": make_graph(4, [(0, 1, 1), (0, 2, 1), (0, 3, 1)]),
    "cycle4": make_graph(4, [(0, 1, 1), (1, 2, 1), (2, 3, 1), (3, 0, 1)]),
    "typed_cycle4": make_graph(4, [(0, 1, 1), (1, 2, 2), (2, 3, 1), (3, 0, 2)]),
    "typed_nodes_path3": make_graph(3, [(0, 1, 1), (1, 2, 1)], types=[1, 0, 0], slots=4),
    "two_components": make_graph(4, [(0, 1, 2), (2, 3, 2)]),
    "triangle_pendant": make_graph(4, [(0, 1, 1), (1, 2, 1), (2, 0, 1), (2, 3, 2)]),
    "single": make_graph(1, [], slots=4),
    "empty": make_graph(0, [], slots=4),
}


def brute_force_aut(g: Graph) -> int:
    size = int(g.num_nodes[0])
    t, a = g.node_types[0, :size], g.adjacency[0, :size, :size]
    count = 0
    for p in itertools.permutations(range(size)):
        idx = torch.tensor(p, dtype=torch.int64)
        if torch.equal(t[idx], t) and torch.equal(a[idx][:, idx], a):
            count += 1
    return count


def all_orders(g: Graph) -> torch.Tensor:
    size, n = int(g.num_nodes[0]), g.node_types.shape[1]
    return torch.tensor([list(p) + list(range(size, n)) for p in itertools.permutations(range(size))]).view(-1, n)


def repeat(g: Graph, m: int) -> Graph:
    return Graph(g.node_types.expand(m, -1), g.adjacency.expand(m, -1, -1), g.node_mask.expand(m, -1))


def tiny_model(enc: GraphEncoding, seed: int = 0) -> Fractal:
    """A roughened 2-level graph fractal over ``enc`` (AR over nodes, AR over a node's row)."""
    torch.manual_seed(seed)
    level = ARLevelConfig(width=16, depth=1, heads=2, embed="table")
    parts = enc.partitioners()
    model = Fractal(list(zip(parts, [level, level], strict=True)), leaf=CategoricalLeafConfig(num_values=enc.num_values))
    return roughen(model, seed=seed, scale=0.5).double().eval()


# ---- orderings -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_random_bfs_log_q_normalises_and_matches_the_sampler(name):
    g = GRAPHS[name]
    perms = all_orders(g)
    log_q = random_bfs_log_prob(repeat(g, perms.shape[0]), perms)
    assert math.isclose(float(log_q.exp().sum()), 1.0, rel_tol=1e-12)  # q is a law over orders
    # every BFS order from the canonical search has q > 0, and the sampler's log q is the same
    assert float(random_bfs_log_prob(g, bfs_order(g))[0]) > -math.inf
    gen = torch.Generator().manual_seed(1)
    many = repeat(g, 3000)
    orders, sampled_log_q = random_bfs_order(many, generator=gen)
    assert torch.allclose(sampled_log_q, random_bfs_log_prob(many, orders))
    # empirical frequencies against exp(log q): |freq - q| within 5 binomial standard errors
    counts = Counter(tuple(o) for o in orders.tolist())
    table = {tuple(p): float(q) for p, q in zip(perms.tolist(), log_q.exp().tolist(), strict=True)}
    assert set(counts) <= {p for p, q in table.items() if q > 0}
    for p, q in table.items():
        se = math.sqrt(q * (1 - q) / 3000) + 1e-12
        assert abs(counts.get(p, 0) / 3000 - q) <= 5 * se + 1e-9


def test_random_bfs_order_is_seeded_and_keeps_padding_last():
    g = GRAPHS["typed_nodes_path3"]
    many = repeat(g, 20)
    a, la = random_bfs_order(many, generator=torch.Generator().manual_seed(3))
    b, lb = random_bfs_order(many, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert bool((a[:, 3] == 3).all())  # the padding slot stays at the end
    x = random_bfs_encodings(GraphEncoding(4, 2, 1), many, generator=torch.Generator().manual_seed(3))
    assert x.shape == (20, 16)


def test_uniform_order_log_q():
    g = GRAPHS["star4"]
    orders, log_q = uniform_order(repeat(g, 5), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(log_q, torch.full((5,), -math.log(24), dtype=torch.float64))
    assert sorted(orders[0].tolist()) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "orders, match",
    [(torch.zeros(1, 3, dtype=torch.int64), r"\[1, 4\]"), (torch.tensor([[0, 0, 1, 3]]), "permutation")],
)
def test_random_bfs_log_prob_rejects_bad_orders(orders, match):
    with pytest.raises(ValueError, match=match):
        random_bfs_log_prob(GRAPHS["path4"], orders)


def test_random_bfs_order_rejects_non_graphs():
    with pytest.raises(TypeError, match="Graph"):
        random_bfs_order(torch.zeros(2, 3, 3))


def test_random_bfs_log_prob_of_a_non_bfs_order_is_minus_infinity():
    # path 0-1-2-3: starting at 0 then jumping to 2 is not breadth-first
    assert float(random_bfs_log_prob(GRAPHS["path4"], torch.tensor([[0, 2, 1, 3]]))[0]) == -math.inf


# ---- automorphisms -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_automorphisms_match_brute_force(name):
    g = GRAPHS[name]
    assert round(float(log_automorphisms(g).exp()[0])) == brute_force_aut(g)


def test_automorphism_counts_known_values():
    expected = {"path4": 2, "star4": 6, "cycle4": 8, "typed_cycle4": 4, "typed_nodes_path3": 1,
                "two_components": 8, "triangle_pendant": 2, "single": 1, "empty": 1}
    for name, count in expected.items():
        assert round(float(log_automorphisms(GRAPHS[name]).exp()[0])) == count, name


def test_automorphisms_reject_non_graphs():
    with pytest.raises(TypeError, match="Graph"):
        log_automorphisms(torch.zeros(2, 2))


# ---- likelihood ----------------------------------------------------------------------------

ENC = GraphEncoding(4, num_node_types=2, num_edge_types=2)


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_importance_weights_have_the_exact_expectation(name):
    """p(E_c) + E_q[[E(pi) != E_c] p(E(pi)) / (|Aut| q(pi))], summed over every order, is the
    exact mass on the BFS encodings (or all encodings): the estimator is unbiased."""
    g, model = GRAPHS[name], tiny_model(ENC)
    g = g.permute(bfs_order(g))  # a BFS canonical order: E_c is one of the BFS encodings
    perms = all_orders(g)
    many = repeat(g, perms.shape[0])
    x = ENC.encode(many.permute(perms))
    with torch.no_grad():
        lp = model.log_prob(x).value.double()
        canonical = model.log_prob(ENC.encode(g)).value.double()[0]
    other = ~(x == ENC.encode(g)).all(-1)
    log_aut = float(log_automorphisms(g)[0])
    for ordering, log_q in (("bfs", random_bfs_log_prob(many, perms)),
                            ("all", torch.full_like(lp, -math.lgamma(perms.shape[0] + 1)))):
        ok = (log_q > -math.inf) & other
        terms = torch.cat([canonical[None], log_q[ok] + lp[ok] - log_aut - log_q[ok]])
        expectation = torch.logsumexp(terms, 0)
        exact = graph_log_likelihood_exact(model, ENC, g, ordering=ordering)[0]
        assert math.isclose(float(expectation), float(exact), rel_tol=0, abs_tol=1e-9)


def test_exact_graph_likelihood_sums_to_the_valid_mass():
    """Summing p(G) over every graph (up to isomorphism) gives the mass on valid encodings."""
    enc = GraphEncoding(3, num_node_types=1, num_edge_types=1)  # V = 2, 512 tensors
    model = tiny_model(enc, seed=2)
    xs = torch.tensor(list(itertools.product(range(2), repeat=9)), dtype=torch.int64)
    with torch.no_grad():
        lp = model.log_prob(xs).value.double()
    graphs, valid = enc.decode(xs)
    valid_mass = float(lp[valid].exp().sum())
    seen, total = set(), 0.0
    for i in valid.nonzero().flatten().tolist():
        g = Graph(graphs.node_types[i : i + 1], graphs.adjacency[i : i + 1], graphs.node_mask[i : i + 1])
        size = int(g.num_nodes[0])
        a = g.adjacency[0, :size, :size]
        key = min(tuple(a[list(p)][:, list(p)].flatten().tolist()) for p in itertools.permutations(range(size)))
        if (size, key) in seen:
            continue
        seen.add((size, key))
        total += float(graph_log_likelihood_exact(model, enc, g)[0].exp())
    assert len(seen) == 1 + 1 + 2 + 4  # graphs on 0..3 unlabelled nodes
    assert math.isclose(total, valid_mass, rel_tol=1e-9)


@pytest.mark.parametrize("ordering, exact_ordering, max_se", [("bfs", "bfs", 0.1), ("uniform", "all", 0.3)])
def test_importance_sampled_estimate_converges(ordering, exact_ordering, max_se):
    g = GRAPHS["triangle_pendant"]
    g = g.permute(bfs_order(g))
    model = tiny_model(ENC, seed=1)
    exact = float(graph_log_likelihood_exact(model, ENC, g, ordering=exact_ordering)[0])
    res = graph_log_likelihood(model, ENC, g, num_orders=400, ordering=ordering,
                               generator=torch.Generator().manual_seed(0))
    assert abs(float(res.log_p[0]) - exact) < 4 * float(res.stderr[0]) + 1e-9
    assert float(res.stderr[0]) < max_se
    assert float(res.canonical_bound[0]) <= exact + 1e-9  # one encoding's mass is a lower bound
    assert res.model_kind == "exact" and res.num_orders == 400 and "BFS" in graph_log_likelihood.__doc__


def test_importance_estimate_is_exact_for_a_graph_with_one_encoding():
    g = GRAPHS["single"]
    model = tiny_model(ENC)
    res = graph_log_likelihood(model, ENC, g, num_orders=3, generator=torch.Generator().manual_seed(0))
    exact = graph_log_likelihood_exact(model, ENC, g)
    assert torch.allclose(res.log_p, exact) and torch.allclose(res.canonical_bound, exact)
    assert float(res.stderr[0]) == 0.0


@pytest.mark.parametrize("name", ["star4", "typed_cycle4", "two_components"])
def test_estimate_is_never_below_the_canonical_bound(name):
    g = GRAPHS[name]
    res = graph_log_likelihood(tiny_model(ENC, seed=3), ENC, repeat(g, 4), num_orders=3,
                               generator=torch.Generator().manual_seed(5))
    assert bool((res.log_p >= res.canonical_bound - 1e-12).all())


def test_graph_batches_give_the_same_result():
    g = repeat(GRAPHS["triangle_pendant"], 5)
    model = tiny_model(ENC, seed=4)
    whole = graph_log_likelihood(model, ENC, g, num_orders=4, generator=torch.Generator().manual_seed(0))
    split = graph_log_likelihood(model, ENC, g, num_orders=4, generator=torch.Generator().manual_seed(0),
                                 graph_batch=2)
    assert whole.log_p.shape == split.log_p.shape == (5,)
    assert torch.allclose(whole.canonical_bound, split.canonical_bound)
    assert split.model_kind == "exact"


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_orders": 0}, ValueError, "num_orders"),
        ({"ordering": "dfs"}, ValueError, "ordering"),
        ({"encoding": GraphEncoding(3, 2, 2)}, ValueError, "max_nodes"),
        ({"encoding": "nope"}, TypeError, "GraphEncoding"),
        ({"graph_batch": 0}, ValueError, "graph_batch"),
    ],
)
def test_graph_log_likelihood_rejects_bad_input(kwargs, error, match):
    model = tiny_model(ENC)
    args = {"encoding": ENC, "num_orders": 2}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        graph_log_likelihood(model, args.pop("encoding"), GRAPHS["path4"], **args)


def test_exact_refuses_large_graphs():
    with pytest.raises(ValueError, match="max_nodes"):
        graph_log_likelihood_exact(tiny_model(ENC), ENC, GRAPHS["path4"], max_nodes=3)
