"""Normalisation: on tiny discrete spaces the probabilities of all configurations sum to 1
(exact models), or to at most 1 (the guiding pixel's bound). float64."""

from __future__ import annotations

import pytest
import torch

from contract.examples import BY_NAME, EXAMPLES, Example, enumerable
from fractalkit.data import all_configurations, configuration_index
from fractalkit.testing import check_normalisation

ENUMERABLE = [e for e in EXAMPLES if enumerable(e)]


@pytest.mark.parametrize("example", [e for e in ENUMERABLE if not e.bound], ids=repr)
def test_probabilities_sum_to_one(example: Example) -> None:
    """Every label (and none), identity and shared random orders; labels reach the model."""
    result = check_normalisation(example.build(torch.float64), atol=1e-6, seed=11)
    assert result.figure < 1e-6


@pytest.mark.parametrize("example", [e for e in ENUMERABLE if e.bound], ids=repr)
def test_guiding_pixel_bound_sums_to_at_most_one(example: Example) -> None:
    """The kit checks a bound's sum is at most 1 (and not vacuous, above 1e-3)."""
    result = check_normalisation(example.build(torch.float64), orders="identity")
    assert 1e-3 < result.figure <= 1 + 1e-9


def test_guiding_pixel_joint_is_normalised() -> None:
    """The bound is log p(g) + log p(x | g): summed over x *and* every g it is exactly 1."""
    model = BY_NAME["mar_guide_top"].build(torch.float64)
    level = model.levels[0]
    assert level.summary is not None
    xs = all_configurations(model.event_shape, model.num_values)  # [C, *event]
    guides = all_configurations((level.event_shape[0],), model.num_values)  # [G, channels]
    original = level.summary.target
    total = []
    try:
        for g in guides:
            level.summary.target = lambda x, g=g: g.expand(x.shape[0], -1)
            with torch.no_grad():
                total.append(model.log_prob(xs, orders="identity").value.logsumexp(0))
    finally:
        level.summary.target = original
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
