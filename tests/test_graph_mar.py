"""MAR over node subsets with linked-neighbour conditions (links from GraphSubsets): the contract
kit on a tiny graph space.

Shape letters: N graphs, k node subsets, D width.
"""

from __future__ import annotations

import pytest
import torch

from fractalkit import ARLevelConfig, CategoricalLeafConfig, Fractal, MARLevelConfig
from fractalkit.graphs import GraphEncoding
from fractalkit.levels.mar import MARLevel
from fractalkit.levels.tokens import LinkedMeanToken
from fractalkit.partition import GraphSubsets, SequenceChunks
from fractalkit.testing import (
    ContractError,
    check_decomposition,
    check_normalisation,
    check_sampler,
    roughen,
    run_all,
)

ENC = GraphEncoding(3, num_node_types=1, num_edge_types=1)  # V = 2, 9 elements: 512 tensors
GRAPH_MAR = MARLevelConfig(width=16, depth=1, heads=2, neighbours=False, linked_neighbours=True)


def graph_mar_model(seed: int = 0, scale: float = 0.6) -> Fractal:
    torch.manual_seed(seed)
    parts = ENC.partitioners()  # GraphSubsets(3 nodes -> 3 single nodes) -> SequenceChunks(3, 1)
    levels = [(parts[0], GRAPH_MAR), (parts[1], ARLevelConfig(width=16, depth=1, heads=2))]
    model = Fractal(levels, leaf=CategoricalLeafConfig(num_values=ENC.num_values))
    return roughen(model, seed=seed, scale=scale).eval()


def test_graph_links_read_later_rows_only():
    model = graph_mar_model()
    level = model.levels[0]
    assert isinstance(level, MARLevel) and level.config.out_tokens == 1
    # path 0-1-2: row 1 has edge(1, 0), row 2 has edge(2, 1)
    x = torch.tensor([[1, 0, 0, 1, 1, 0, 1, 0, 1]])
    assert isinstance(level.tokens, LinkedMeanToken) and level.partitioner.has_links
    links = level.partitioner.links(level.partitioner.split(x))  # [N, j, i]
    assert links[0].tolist() == [[False, True, False], [False, False, True], [False, False, False]]


@pytest.mark.parametrize("seed", [0, 1])
def test_graph_neighbour_mar_normalises_and_decomposes(seed):
    model = graph_mar_model(seed)
    check_normalisation(model)  # every order spec: identity and shared random orders
    check_decomposition(model)


@pytest.mark.slow
def test_graph_neighbour_mar_passes_the_whole_contract_kit():
    run_all(graph_mar_model(3, scale=0.3), num_samples=4000)


def test_graph_neighbour_sampler_matches_its_likelihood():
    check_sampler(graph_mar_model(2), num_samples=3000)


def test_the_kit_catches_a_leaky_graph_condition(monkeypatch):
    """Reading graph links from children that are not yet known breaks normalisation."""
    model = graph_mar_model(0)
    leaky = LinkedMeanToken.linked_mean

    def peek(self, h, links, visible):  # every child treated as known: reads masked rows
        return leaky(self, h, links, torch.ones_like(visible))

    monkeypatch.setattr(LinkedMeanToken, "linked_mean", peek)
    with pytest.raises(ContractError):
        check_normalisation(model, orders="identity")


def test_default_mar_config_is_unchanged():
    assert MARLevelConfig().out_tokens == 5 and not MARLevelConfig().linked_neighbours


@pytest.mark.parametrize(
    "config, partitioner, match",
    [
        ({"linked_neighbours": True}, None, "neighbours=False"),
        ({"linked_neighbours": True, "neighbours": False}, SequenceChunks(9, 3), "data-dependent links"),
        ({"linked_neighbours": True, "neighbours": False}, GraphSubsets(9, 27, 3), "data-dependent links"),
    ],
)
def test_linked_neighbours_rejects_bad_setups(config, partitioner, match):
    with pytest.raises(ValueError, match=match):
        cfg = MARLevelConfig(width=16, depth=1, heads=2, **config)
        Fractal([(partitioner, cfg)], leaf=CategoricalLeafConfig(num_values=2))


def test_graph_condition_reaches_the_likelihood():
    """Under the reverse order the known later children's edges feed each earlier child."""
    model = graph_mar_model(1)
    x = torch.tensor([[1, 0, 0, 1, 1, 0, 1, 0, 1], [1, 0, 0, 1, 0, 0, 1, 1, 0]])
    before = model.log_prob(x, orders=[torch.tensor([2, 1, 0]), None]).value
    with torch.no_grad():
        model.levels[0].tokens.proj.weight.zero_()
        model.levels[0].tokens.proj.bias.zero_()
    after = model.log_prob(x, orders=[torch.tensor([2, 1, 0]), None]).value
    assert not torch.allclose(before, after)


def test_partitioners_without_links_say_so():
    assert SequenceChunks(9, 3).links(torch.zeros(1, 3, 3, dtype=torch.long)) is None
    assert not SequenceChunks(9, 3).has_links
    below = GraphSubsets(3, 9, 3)  # a subset one level down: edges point outside it
    assert not below.has_links and below.links(torch.zeros(1, 3, 9, dtype=torch.long)) is None


def test_saved_graph_neighbours_setting_loads_as_linked_neighbours():
    from fractalkit.legacy import upgrade_config

    old = {"levels": [{"level": {"kind": "mar", "graph_neighbours": True, "neighbours": False}},
                      {"level": {"kind": "mar", "graph_neighbours": False}}]}
    new = [e["level"] for e in upgrade_config(old)["levels"]]
    assert new == [{"kind": "mar", "neighbours": False, "linked_neighbours": True}, {"kind": "mar"}]
