"""Sampling agrees with likelihood (chi-square), is reproducible, and completion is exact where
DESIGN.md says so.

Each chi-square test compares the frequencies of float32 samples with the float64
``exp(log_prob)`` of the same weights, pooling cells whose expected count is under 5. A
deliberately broken sampler (temperature 0.7, or MAR decoding in another order than the one
``log_prob`` scores) must fail the very same test.
"""

from __future__ import annotations

import pytest
import torch

from contract.examples import BY_NAME, EXAMPLES, Example, fixed_orders, labels_for, random_data
from contract.sampling_utils import model_probabilities, sample_counts, sampling_test
from contract.stats import chi_square, chi_square_p_value
from fractalkit.data import all_configurations, configuration_index

SAMPLES = 4000
ALPHA_CORRECT = 1e-3  # a correct sampler must not be rejected at this level
ALPHA_BROKEN = 1e-6  # a broken one must be rejected at this level

# Rows with at most 256 cells, tested with SAMPLES draws; MORE with 20000 (peakier models).
FAST = ["ar_ar", "mar_mar_cond", "mar_ar_mar", "channels_ar", "chunks_multi_leaf_cond", "graph_subsets"]
MORE = [BY_NAME[name] for name in ("ar_ar_cond", "mar_mar", "ar_mar_ar_cond")]


def _label(example: Example) -> int | None:
    return 1 if example.num_classes else None


def test_chi_square_p_value_closed_forms() -> None:
    # dof 2: P(chi2 >= s) = exp(-s/2); dof 1: erfc(sqrt(s/2)).
    for s in (0.1, 1.0, 7.5, 30.0):
        closed = torch.exp(torch.tensor(-s / 2, dtype=torch.float64)).item()
        assert chi_square_p_value(s, 2) == pytest.approx(closed, rel=1e-10)
        expected = torch.special.erfc(torch.tensor(s / 2, dtype=torch.float64).sqrt()).item()
        assert chi_square_p_value(s, 1) == pytest.approx(expected, rel=1e-10)


def test_chi_square_pools_small_cells_and_detects_a_wrong_model() -> None:
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([0.5, 0.3, 0.15, 0.04, 0.01], dtype=torch.float64)
    draws = torch.multinomial(probs, 2000, replacement=True, generator=g)
    counts = torch.bincount(draws, minlength=5)
    good = chi_square(counts, probs)
    assert good.p_value > ALPHA_CORRECT and good.cells == 5
    few = chi_square(counts[:], probs, min_expected=50)  # the 0.01 and 0.04 cells pooled
    assert few.cells == 4 and few.dof == 3
    wrong = chi_square(counts, torch.tensor([0.4, 0.4, 0.1, 0.05, 0.05], dtype=torch.float64))
    assert wrong.p_value < ALPHA_BROKEN


@pytest.mark.parametrize("name", FAST)
def test_samples_follow_exp_log_prob(name: str) -> None:
    example = BY_NAME[name]
    orders = fixed_orders(example.build(), seed=21)  # shared random orders: an exact MAR model
    result = sampling_test(
        example, SAMPLES, y=_label(example), seed=0, log_prob_orders=orders, orders=orders
    )
    assert result.p_value > ALPHA_CORRECT, result
    assert result.cells >= 10, "too few cells for the test to have power"


@pytest.mark.parametrize("example", MORE, ids=repr)
def test_samples_follow_exp_log_prob_more_samples(example: Example) -> None:
    orders = fixed_orders(example.build(), seed=21)
    result = sampling_test(
        example, 20000, y=_label(example), seed=1, log_prob_orders=orders, orders=orders
    )
    assert result.p_value > ALPHA_CORRECT, result


@pytest.mark.parametrize("name", ["ar_ar", "mar_mar_cond"])
def test_temperature_breaks_the_test(name: str) -> None:
    example = BY_NAME[name]
    orders = fixed_orders(example.build(), seed=21)
    result = sampling_test(
        example, SAMPLES, y=_label(example), seed=0, log_prob_orders=orders, orders=orders,
        temperature=0.7,
    )
    assert result.p_value < ALPHA_BROKEN, result


def test_wrong_order_breaks_the_test() -> None:
    example = BY_NAME["mar_mar"]
    orders = fixed_orders(example.build(), seed=21)
    result = sampling_test(
        example, SAMPLES, y=None, seed=0, log_prob_orders=orders, orders="identity"
    )
    assert result.p_value < ALPHA_BROKEN, result


def test_guiding_pixel_samples_follow_the_marginal() -> None:
    """With a guiding pixel, samples are x ~ sum_g p(g) p(x | g); check against that marginal."""
    example = BY_NAME["mar_guide_top"]
    model = example.build(torch.float64)
    level = model.levels[0]
    xs = all_configurations(model.event_shape, model.num_values)
    guides = all_configurations((level.event_shape[0],), model.num_values)
    joint = []
    original = level.guide_target
    try:
        for g in guides:  # log p(g) + log p(x | g) for every x, g
            level.guide_target = lambda x, g=g: g.expand(x.shape[0], -1)
            with torch.no_grad():
                joint.append(model.log_prob(xs, orders="identity").value)
    finally:
        level.guide_target = original
    marginal = torch.stack(joint).logsumexp(0).exp()  # [V**E]
    counts = sample_counts(example.build(torch.float32), SAMPLES, None, seed=3, orders="identity")
    result = chi_square(counts, marginal)
    assert result.p_value > ALPHA_CORRECT, result
    # The bound's exp(log_prob) is not the sampling distribution: the test can tell them apart.
    bound = model_probabilities(model, None, "identity")
    assert chi_square(counts, bound / bound.sum()).p_value < ALPHA_BROKEN


# ---- reproducibility ---------------------------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES, ids=repr)
def test_seeded_sampling_is_reproducible(example: Example) -> None:
    model = example.build(torch.float32)
    y = labels_for(example, 8, seed=1)

    def draw(seed: int, **kw) -> torch.Tensor:
        return model.sample(8, y, generator=torch.Generator().manual_seed(seed), **kw)

    a, b, c = draw(5), draw(5), draw(6)
    assert a.dtype == torch.int64 and a.shape == (8, *model.event_shape)
    assert int(a.min()) >= 0 and int(a.max()) < model.num_values
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # The KV cache changes nothing, not even the random stream's use.
    assert torch.equal(draw(5, kv_cache=False), a)


# ---- completion --------------------------------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES, ids=repr)
def test_completion_keeps_known_elements(example: Example) -> None:
    model = example.build(torch.float32)
    n = 6
    x = random_data(model, n, seed=8)
    y = labels_for(example, n, seed=9)
    g = torch.Generator().manual_seed(10)
    for p in (0.3, 0.8):
        known = torch.rand(x.shape, generator=g) < p
        out = model.complete(x, known, y, generator=torch.Generator().manual_seed(11))
        assert out.shape == x.shape and out.dtype == torch.int64
        assert torch.equal(out[known], x[known])
        assert int(out.min()) >= 0 and int(out.max()) < model.num_values
    # Everything known: the input comes back unchanged.
    assert torch.equal(model.complete(x, torch.ones_like(x, dtype=torch.bool), y), x)


def _completion_test(
    example: Example, known_flat: torch.Tensor, orders_sample, orders_lp, seed: int, **options
):
    """Chi-square of completions of one instance against exp(log_prob) renormalised over the
    configurations that agree with the known elements."""
    model64 = example.build(torch.float64)
    y = _label(example)
    xs = all_configurations(model64.event_shape, model64.num_values)
    g = torch.Generator().manual_seed(seed)
    x = xs[torch.randint(len(xs), (1,), generator=g)]  # [1, *event]
    known = known_flat.view(1, *model64.event_shape)
    consistent = (xs[:, known[0]] == x[:, known[0]]).all(-1)  # [V**E]
    probs = model_probabilities(model64, y, orders_lp)[consistent]
    model = example.build(torch.float32)
    labels = None if y is None else torch.full((SAMPLES,), y)
    out = model.complete(
        x.expand(SAMPLES, *x.shape[1:]), known.expand(SAMPLES, *known.shape[1:]), labels,
        generator=torch.Generator().manual_seed(seed), orders=orders_sample, **options,
    )
    index = configuration_index(out, model.num_values)
    cell_of = torch.full((len(xs),), -1, dtype=torch.long)
    cell_of[consistent] = torch.arange(int(consistent.sum()))
    assert bool((cell_of[index] >= 0).all())
    counts = torch.bincount(cell_of[index], minlength=int(consistent.sum()))
    return chi_square(counts, probs)


def test_ar_completion_of_a_prefix_is_exact() -> None:
    """AR: known = a prefix of the patch-then-pixel-then-channel order (pixel 0, then pixel 1's
    first channel; event (C=2, 2, 2)). Elements in that order: (pixel j, channel c)."""
    example = BY_NAME["ar_ar"]
    known = torch.zeros(2, 2, 2, dtype=torch.bool)
    known[:, 0, 0] = True  # pixel 0, both channels
    known[0, 0, 1] = True  # pixel 1, channel 0
    result = _completion_test(example, known.flatten(), None, None, seed=12)
    assert result.p_value > ALPHA_CORRECT, result


def test_mar_completion_of_full_children_is_exact() -> None:
    """MAR: known = full top-level children 0 and 2; decoding puts them first, so the
    completions follow the model of the order (0, 2, 1, 3) at the top, identity below."""
    example = BY_NAME["mar_mar_cond"]
    known = torch.zeros(2, 2, 2, dtype=torch.bool)
    known[:, 0, 0] = True  # child 0 (pixel (0, 0))
    known[:, 1, 0] = True  # child 2 (pixel (1, 0))
    lp_orders = [torch.tensor([0, 2, 1, 3]), "identity"]
    result = _completion_test(example, known.flatten(), "identity", lp_orders, seed=13)
    assert result.p_value > ALPHA_CORRECT, result


def test_completion_test_detects_a_broken_sampler() -> None:
    example = BY_NAME["ar_ar"]
    known = torch.zeros(2, 2, 2, dtype=torch.bool)
    known[:, 0, 0] = True
    result = _completion_test(example, known.flatten(), None, None, seed=12, temperature=0.7)
    assert result.p_value < ALPHA_BROKEN, result
