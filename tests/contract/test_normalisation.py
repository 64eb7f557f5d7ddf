"""Normalisation: on tiny discrete spaces the probabilities of all configurations sum to 1
(exact models), or to at most 1 (the guiding pixel's bound). float64."""

from __future__ import annotations

import math

import pytest
import torch

from contract.examples import BY_NAME, EXAMPLES, Example, enumerable, fixed_orders
from fractalkit.data import all_configurations, configuration_index

ENUMERABLE = [e for e in EXAMPLES if enumerable(e)]


def total_log_mass(model, y: int | None, orders) -> float:
    """``logsumexp`` of ``log_prob`` over every configuration, for label ``y`` (or none)."""
    xs = all_configurations(model.event_shape, model.num_values)
    labels = None if y is None else torch.full((len(xs),), y)
    with torch.no_grad():
        return float(model.log_prob(xs, labels, orders=orders).value.logsumexp(0))


def _labels(example: Example) -> list[int | None]:
    return [None, *range(example.num_classes)] if example.num_classes else [None]


@pytest.mark.parametrize("example", [e for e in ENUMERABLE if not e.bound], ids=repr)
def test_probabilities_sum_to_one(example: Example) -> None:
    model = example.build(torch.float64)
    specs = {"identity": "identity", "shared": fixed_orders(model, seed=11)}
    for y in _labels(example):
        for name, orders in specs.items():
            mass = total_log_mass(model, y, orders)
            assert abs(math.expm1(mass)) < 1e-6, f"y={y}, orders={name}: sum = {math.exp(mass)}"
    if example.num_classes:  # the label reaches the model: each class is its own distribution
        xs = all_configurations(model.event_shape, model.num_values)
        with torch.no_grad():
            per_class = [
                model.log_prob(xs, torch.full((len(xs),), c), orders="identity").value
                for c in range(2)
            ]
        assert float((per_class[0] - per_class[1]).abs().max()) > 1e-3


@pytest.mark.parametrize("example", [e for e in ENUMERABLE if e.bound], ids=repr)
def test_guiding_pixel_bound_sums_to_at_most_one(example: Example) -> None:
    model = example.build(torch.float64)
    for y in _labels(example):
        mass = math.exp(total_log_mass(model, y, "identity"))
        assert mass <= 1 + 1e-9, f"y={y}: sum = {mass}"
        # A bound that is not vacuous: the guiding pixel's model does put mass somewhere.
        assert mass > 1e-3


def test_guiding_pixel_joint_is_normalised() -> None:
    """The bound is log p(g) + log p(x | g): summed over x *and* every g it is exactly 1."""
    model = BY_NAME["mar_guide_top"].build(torch.float64)
    level = model.levels[0]
    assert level.guide is not None
    xs = all_configurations(model.event_shape, model.num_values)  # [C, *event]
    guides = all_configurations((level.event_shape[0],), model.num_values)  # [G, channels]
    original = level.guide_target
    total = []
    try:
        for g in guides:
            level.guide_target = lambda x, g=g: g.expand(x.shape[0], -1)
            with torch.no_grad():
                total.append(model.log_prob(xs, orders="identity").value.logsumexp(0))
    finally:
        level.guide_target = original
    mass = float(torch.stack(total).logsumexp(0).exp())
    assert abs(mass - 1) < 1e-6, mass


def test_all_configurations_enumerates_the_space() -> None:
    xs = all_configurations((2, 1, 2), 3)
    assert xs.shape == (81, 2, 1, 2) and xs.dtype == torch.int64
    assert len({tuple(r.flatten().tolist()) for r in xs}) == 81
    torch.testing.assert_close(configuration_index(xs, 3), torch.arange(81))
    assert all_configurations((), 5).shape == (5,)  # a scalar event: one element
    with pytest.raises(ValueError, match="num_values"):
        all_configurations((2,), 0)
    with pytest.raises(ValueError, match="exceed"):
        all_configurations((64,), 2)
    with pytest.raises(TypeError, match="event_shape"):
        all_configurations(3, 2)  # type: ignore[arg-type]
