"""The summary prefix (guiding pixel) as a part a level composes (``MARLevelConfig.summary``).

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
    SummaryConfig,
)
from fractalkit.leaves.categorical import CategoricalLeaf


def _guided(guide) -> Fractal:
    torch.manual_seed(0)
    model = Fractal(
        [(ImagePatches((2, 1), 1, channels=2), MARLevelConfig(width=8, depth=1, heads=2, summary=SummaryConfig(guide)))],
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
    assert isinstance(level.summary.leaf, CategoricalLeaf) and level.summary.leaf.event_shape == (2,)
    every = torch.tensor(list(itertools.product(range(3), repeat=4))).view(-1, 2, 2, 1)
    lp = model.log_prob(every, orders="identity")
    assert lp.kind == "bound"
    total = lp.value.logsumexp(0).exp().item()
    assert 0.05 < total <= 1 + 1e-12
    assert torch.allclose(lp.value, model.stepwise_log_prob(every, orders="identity"), atol=1e-12)
    # The summary is the partitioner's: per-channel block mean, rounded half to even.
    x = torch.tensor([[[[0], [1]], [[2], [2]]]])
    assert level.summary.target(x).tolist() == [[0, 2]]


def test_partitioner_without_summary_is_refused():
    with pytest.raises(NotImplementedError, match="SequenceChunks defines no summary"):
        Fractal(
            [(SequenceChunks(4, 2), MARLevelConfig(width=8, depth=1, heads=2,
                                                   summary=SummaryConfig(CategoricalLeafConfig(num_values=3))))],
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


def test_summary_needs_a_leaf_config():
    """No level picks a summary leaf: the setting names it, or says what is missing."""
    with pytest.raises(TypeError):
        SummaryConfig()  # the leaf is a required field
    with pytest.raises(ValueError, match="leaf is required"):
        SummaryConfig(None)
    with pytest.raises(TypeError, match=r"SummaryConfig\.leaf must be a LeafConfig"):
        SummaryConfig(MARLevelConfig())
    with pytest.raises(ValueError, match="input must be 'rounded' or 'continuous'"):
        SummaryConfig(CategoricalLeafConfig(num_values=3), input="exact")
    with pytest.raises(TypeError, match="summary must be a SummaryConfig"):
        MARLevelConfig(summary=True)
    with pytest.raises(ValueError, match="a summary needs embed='linear'"):
        MARLevelConfig(summary=SummaryConfig(CategoricalLeafConfig(num_values=3)), embed="table")


def test_old_summary_fields_load_through_the_legacy_conversion():
    """A config dict with the three old fields (``guiding_pixel``, ``guide``, ``guide_input``)
    becomes the one ``summary`` setting; the old default leaf was the paper's RGB leaf."""
    from fractalkit.imagenet.models import PAPER_SUMMARY_LEAF
    from fractalkit.legacy import upgrade_config

    guide = CategoricalLeafConfig(num_values=3).to_dict()
    old = {"levels": [
        {"level": {"kind": "mar", "guiding_pixel": True, "guide": guide, "guide_input": "continuous"}},
        {"level": {"kind": "mar", "guiding_pixel": False, "guide": guide}},
        {"level": {"kind": "mar", "guiding_pixel": True}},
    ]}
    new = [e["level"] for e in upgrade_config(old)["levels"]]
    assert new[0] == {"kind": "mar", "summary": {"kind": "summary", "leaf": guide, "input": "continuous"}}
    assert new[1] == {"kind": "mar", "summary": None}
    assert new[2]["summary"]["leaf"] == PAPER_SUMMARY_LEAF.to_dict()
    assert upgrade_config(upgrade_config(old)) == upgrade_config(old)  # idempotent
    assert old["levels"][1]["level"]["guiding_pixel"] is False  # the input is not modified


def test_the_level_base_holds_no_parameters():
    """The input network and the summary prefix are parts a level composes; the base has none."""
    from fractalkit import ChildInputs, Level, SummaryPrefix

    level = _guided(CategoricalLeafConfig(num_values=3)).levels[0]
    assert isinstance(level.inputs, ChildInputs) and isinstance(level.summary, SummaryPrefix)
    tops = {name.split(".")[0] for name, _ in level.named_parameters()}
    assert tops == {"inputs", "summary", "backbone", "mask_token", "pos_embed", "child"}

    class Bare(Level):
        pass

    bare = Bare(level.partitioner, level.child, cond_dim=8, cond_tokens=1, width=8, out_tokens=5)
    assert [n for n, _ in bare.named_parameters() if not n.startswith("child.")] == []
    assert bare.summary is None
