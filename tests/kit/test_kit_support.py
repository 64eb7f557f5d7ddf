"""The kit's own machinery: supports, decoding orders, exact sampling laws and their errors."""

from __future__ import annotations

import pytest
import torch
from contract.examples import EXAMPLES, Example, enumerable

from fractalkit import ARLevelConfig, CategoricalLeafConfig, Fractal, MARLevelConfig, SequenceChunks
from fractalkit.testing import (
    chi_square,
    decoding_order,
    fixed_orders,
    likelihood_law,
    prefix_known,
    run_all,
    sampling_law,
    support,
    support_index,
    tiny_fractal,
)

EXACT = [e for e in EXAMPLES if enumerable(e) and not e.bound]


@pytest.mark.parametrize("example", EXACT, ids=repr)
def test_sampling_law_at_temperature_one_is_exp_log_prob(example: Example) -> None:
    """Two independent routes to one law: the chain of conditionals rebuilt from marginals
    (decoding order) and log_prob itself, under the same fixed orders."""
    model = example.build(torch.float64)
    orders = fixed_orders(model, seed=5)
    y = 1 if example.num_classes else None
    torch.testing.assert_close(
        sampling_law(model, y, orders=orders), likelihood_law(model, y, orders), rtol=0, atol=1e-12
    )


def test_shaped_laws_are_normalised_and_differ() -> None:
    model = tiny_fractal(MARLevelConfig(width=16, depth=1, heads=2))
    orders = fixed_orders(model, seed=0)
    plain = sampling_law(model, 1, orders=orders)
    for options in ({"temperature": 0.5}, {"guidance": 3.0}, {"guidance": 3.0, "guidance_schedule": "linear"}):
        law = sampling_law(model, 1, orders=orders, **options)
        assert abs(float(law.sum()) - 1) < 1e-12, options
        assert float((law - plain).abs().max()) > 1e-3, options
    sharp = sampling_law(model, 1, orders=orders, temperature=0.5)
    assert float(sharp.max()) > float(plain.max())  # T < 1 sharpens
    with pytest.raises(ValueError, match="guidance needs a class label"):
        sampling_law(model, None, orders=orders, guidance=2.0)


def test_decoding_order_is_depth_first_through_the_partitioners() -> None:
    by_name = {e.name: e for e in EXAMPLES}
    # ar_ar: (C=2, 2, 2) -> 4 pixels -> 2 channels; element c*4 + pixel.
    assert decoding_order(by_name["ar_ar"].build(), "identity").tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    model = by_name["mar_mar"].build()
    orders = [torch.tensor([3, 1, 0, 2]), torch.tensor([1, 0])]
    assert decoding_order(model, orders).tolist() == [7, 3, 5, 1, 4, 0, 6, 2]
    with pytest.raises(ValueError, match="no single decoding order"):
        decoding_order(model, None)  # random orders at a MAR level
    with pytest.raises(ValueError, match="not a permutation"):
        decoding_order(model, [torch.tensor([0, 0, 1, 2]), None])
    known = prefix_known(model, orders)  # the first 2 of 4 top-level children: pixels 3 and 1
    assert known.flatten().nonzero().flatten().tolist() == [1, 3, 5, 7]


def test_support_is_every_configuration_and_refuses_large_spaces() -> None:
    model = tiny_fractal()
    xs = support(model)
    assert xs.shape == (81, 4)
    torch.testing.assert_close(support_index(xs, model), torch.arange(81))
    big = Fractal([(SequenceChunks(16, 4), ARLevelConfig(width=16, depth=1, heads=2))], CategoricalLeafConfig(num_values=4))
    with pytest.raises(ValueError, match="4294967296 configurations, more than the kit enumerates"):
        support(big)
    assert "normalisation" in run_all(big.eval(), skip=["save_load"])["skipped"]


def test_chi_square_with_everything_in_one_cell_rejects_nothing() -> None:
    result = chi_square(torch.tensor([10, 0, 0]), torch.tensor([0.98, 0.01, 0.01]))
    assert (result.cells, result.dof, result.p_value) == (1, 0, 1.0)


def test_run_all_refuses_a_training_model_and_unknown_names() -> None:
    model = tiny_fractal()
    with pytest.raises(ValueError, match="unknown check names"):
        run_all(model, skip=["normalization"])
    with pytest.raises(ValueError, match=r"call model.eval\(\) first"):
        run_all(model.train())


def test_checks_refuse_what_they_cannot_check() -> None:
    from fractalkit.testing import check_normalisation, check_sampler

    with pytest.raises(TypeError, match=r"expected a fractalkit\.Fractal, got str"):
        check_normalisation("model")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="only known in exact mode"):
        check_sampler(tiny_fractal(MARLevelConfig(width=16, depth=1, heads=2)), 1, steps=(2,))
    bound = next(e for e in EXAMPLES if e.bound).build()
    with pytest.raises(ValueError, match="log_prob is a bound"):
        check_sampler(bound, None)
