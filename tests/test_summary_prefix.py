"""The summary prefix (guiding pixel) as a separable piece of the level base.

Any leaf config predicts the summary, the partitioner defines it, and a partitioner without one
is refused with a message that says so; leaf configs written before the ``LeafConfig`` contract
(plain ``ComponentConfig`` dataclasses) still build.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from fractalkit import (
    CategoricalLeafConfig,
    ComponentConfig,
    Fractal,
    ImagePatches,
    LeafConfig,
    MARLevelConfig,
    SequenceChunks,
)
from fractalkit.leaves.categorical import CategoricalLeaf


def _guided(guide) -> Fractal:
    torch.manual_seed(0)
    model = Fractal(
        [(ImagePatches((2, 1), 1, channels=2), MARLevelConfig(width=8, depth=1, heads=2, guiding_pixel=True, guide=guide))],
        CategoricalLeafConfig(num_values=3),
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    return model.double().eval()


def test_any_leaf_predicts_the_summary():
    """A categorical guide leaf over the per-channel block mean: a bound that sums to <= 1,
    and the sampling path scores what teacher forcing scores."""
    model = _guided(CategoricalLeafConfig(num_values=3))
    level = model.levels[0]
    assert isinstance(level.guide, CategoricalLeaf) and level.guide.event_shape == (2,)
    every = torch.tensor(list(itertools.product(range(3), repeat=4))).view(-1, 2, 2, 1)
    lp = model.log_prob(every, orders="identity")
    assert lp.kind == "bound"
    total = lp.value.logsumexp(0).exp().item()
    assert 0.05 < total <= 1 + 1e-12
    assert torch.allclose(lp.value, model.stepwise_log_prob(every, orders="identity"), atol=1e-12)
    # The summary is the partitioner's: per-channel block mean, rounded half to even.
    x = torch.tensor([[[[0], [1]], [[2], [2]]]])
    assert level.guide_target(x).tolist() == [[0, 2]]


def test_partitioner_without_summary_is_refused():
    with pytest.raises(NotImplementedError, match="SequenceChunks defines no summary"):
        Fractal(
            [(SequenceChunks(4, 2), MARLevelConfig(width=8, depth=1, heads=2, guiding_pixel=True,
                                                   guide=CategoricalLeafConfig(num_values=3)))],
            CategoricalLeafConfig(num_values=3),
        )


@dataclasses.dataclass(frozen=True)
class _OldStyleLeafConfig(ComponentConfig):
    """A leaf config as the docs described it before ``LeafConfig`` existed (not registered)."""

    kind = "old_style_leaf_tests"
    num_values: int = 3

    def build(self, event_shape, cond_dim, cond_tokens):
        return CategoricalLeaf(event_shape, cond_dim, cond_tokens, self.num_values)


def test_leaf_configs_written_before_the_contract_still_build():
    assert isinstance(_OldStyleLeafConfig(), LeafConfig)
    with pytest.warns(DeprecationWarning, match="before the one build context"):  # old build signature
        model = Fractal([(SequenceChunks(4, 2), MARLevelConfig(width=8, depth=1, heads=2))], _OldStyleLeafConfig())
    assert isinstance(model.leaf, CategoricalLeaf)
