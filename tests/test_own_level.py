"""The tutorial's GRU level (docs/tutorials/own_level.md), written only against the public base.

It must behave as every built-in level does: normalise exactly, score the sampling path as
teacher forcing does, sample from its likelihood, follow the top level's controls (callback,
linear guidance schedule) with no code of its own for them, and save and load. Also: the
declared contracts (``LevelConfig``, ``LeafConfig``) reject what does not fulfil them, naming it.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from own_level import CachedGRULevel, CachedGRULevelConfig, GRULevel, GRULevelConfig

from fractalkit import (
    CategoricalLeafConfig,
    ComponentConfig,
    Fractal,
    ImagePatches,
    MARLevelConfig,
    SequenceChunks,
)


def _roughen(model: Fractal, seed: int) -> Fractal:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def _model(layout: str, cached: bool = False, num_classes: int = 2) -> Fractal:
    gru = (CachedGRULevelConfig if cached else GRULevelConfig)(width=8)
    torch.manual_seed(0)
    if layout == "top":  # a GRU over 4 pixels: 3**4 = 81 images
        levels = [(ImagePatches(2, 1, channels=1), gru)]
    elif layout == "above_mar":  # GRU over 2 chunks, MAR over each chunk's 2 symbols: 81
        levels = [
            (SequenceChunks(4, 2), gru),
            (SequenceChunks(2, 1), MARLevelConfig(width=8, depth=1, heads=2)),
        ]
    else:  # "below_mar": MAR over 2 chunks, a table-embedded GRU inside each: 81
        levels = [
            (SequenceChunks(4, 2), MARLevelConfig(width=8, depth=1, heads=2, embed="table")),
            (SequenceChunks(2, 1), dataclasses.replace(gru, embed="table")),
        ]
    model = Fractal(levels, CategoricalLeafConfig(num_values=3), num_classes=num_classes)
    return _roughen(model, seed=1).double().eval()


LAYOUTS = ["top", "above_mar", "below_mar"]


def _support(model: Fractal) -> torch.Tensor:
    every = torch.tensor(list(itertools.product(range(3), repeat=4)))
    return every.view(-1, *model.event_shape)


@pytest.mark.parametrize("cached", [False, True], ids=["default", "cached"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_normalises_and_decomposes(layout, cached):
    model = _model(layout, cached)
    assert isinstance(model.levels[0 if layout != "below_mar" else 1], GRULevel)
    every = _support(model)
    for label in (0, 1):
        y = torch.full((len(every),), label)
        lp = model.log_prob(every, y, orders="identity").value
        assert abs(lp.logsumexp(0).exp().item() - 1) < 1e-12
        for kv_cache in (True, False):
            stepwise = model.stepwise_log_prob(every, y, orders="identity", kv_cache=kv_cache)
            assert torch.allclose(lp, stepwise, atol=1e-12, rtol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cached_variant_walks_the_same_path(layout):
    plain, cached = _model(layout), _model(layout, cached=True)
    cached.load_state_dict(plain.state_dict())
    assert isinstance(cached.levels[0 if layout != "below_mar" else 1], CachedGRULevel)
    y = torch.tensor([0, 1, 1])
    steps = (2,) * (len(plain.levels) - 1)
    draws = [
        m.sample(y=y, guidance=2.0, generator=torch.Generator().manual_seed(3), steps=steps)
        for m in (plain, cached)
    ]
    assert torch.equal(draws[0], draws[1])
    every = _support(plain)
    assert torch.allclose(
        plain.stepwise_log_prob(every), cached.stepwise_log_prob(every), atol=1e-12, rtol=0
    )


def test_callback_and_linear_schedule_need_no_code_in_the_level():
    """The leaf sees w_j = 1 + (w - 1) (j + 1) / k at the GRU top level's step j."""
    model = _model("top")
    scales, leaf = [], model.leaf
    inner = leaf.decode

    def decode(x, known, cond, ctx):
        scales.append(ctx.scale)
        return inner(x, known, cond, ctx)

    leaf.decode = decode
    progress = []
    try:
        out = model.sample(
            y=torch.tensor([0, 1]), guidance=4.0, guidance_schedule="linear",
            callback=progress.append, generator=torch.Generator().manual_seed(0),
        )
    finally:
        del leaf.decode
    assert scales == pytest.approx([1 + 3 * (j + 1) / 4 for j in range(4)])
    assert [(p.step, p.num_steps) for p in progress] == [(j, 4) for j in range(1, 5)]
    assert [int(p.decided.sum()) for p in progress] == [2, 4, 6, 8]  # 2 images, 1 pixel a step
    assert torch.equal(progress[-1].canvas, out)


def test_samples_follow_the_likelihood():
    """Chi-square of 3000 draws against exp(log_prob), rare cells pooled."""
    model = _model("above_mar", num_classes=0)
    every = _support(model)
    prob = model.log_prob(every, orders="identity").value.exp()
    draws = model.sample(3000, orders="identity", generator=torch.Generator().manual_seed(5))
    cell = (draws.flatten(1) * torch.tensor([27, 9, 3, 1])).sum(1)
    observed = torch.bincount(cell, minlength=81).double()
    expected = len(draws) * prob
    small = expected < 5
    observed = torch.cat([observed[~small], observed[small].sum(0, keepdim=True)])
    expected = torch.cat([expected[~small], expected[small].sum(0, keepdim=True)])
    chi2 = ((observed - expected) ** 2 / expected).sum()
    dof = torch.tensor(len(observed) - 1, dtype=torch.float64)
    assert torch.special.gammaincc(dof / 2, chi2 / 2) > 1e-3


@pytest.mark.parametrize("layout", LAYOUTS)
def test_saves_and_loads(layout, tmp_path):
    model = _model(layout)
    model.save(tmp_path / "m.safetensors")
    again = Fractal.load(tmp_path / "m.safetensors").eval()
    assert again.config == model.config
    assert again.config.levels[0 if layout != "below_mar" else 1][1].kind == "gru_tests"
    every = _support(model)
    assert torch.equal(
        again.log_prob(every, orders="identity").value, model.log_prob(every, orders="identity").value
    )


@dataclasses.dataclass(frozen=True)
class _NotALevel(ComponentConfig):
    kind = "not_a_level_tests"
    width: int = 8


def test_contracts_name_what_is_missing():
    leaf = CategoricalLeafConfig(num_values=3)
    with pytest.raises(TypeError, match=r"levels\[0\]\[1\] must be a LevelConfig.*lacks \['build', 'out_tokens'\]"):
        Fractal([(ImagePatches(2, 1, channels=1), _NotALevel())], leaf)
    with pytest.raises(TypeError, match=r"leaf must be a LeafConfig.*GRULevelConfig"):
        Fractal([(ImagePatches(2, 1, channels=1), GRULevelConfig())], GRULevelConfig())
