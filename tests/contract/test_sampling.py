"""Sampling agrees with likelihood (chi-square), is reproducible, and completion is exact where
DESIGN.md says so.

Each chi-square test compares the frequencies of float32 samples with the float64
``exp(log_prob)`` of the same weights (or, with a temperature or guidance, with the exact law of
the shaped sampler, :func:`fractalkit.testing.sampling_law`), pooling cells whose expected count
is under 5. A deliberately broken sampler (temperature 0.7 against the untempered law, guidance
against the unguided law, or MAR decoding in another order than the one ``log_prob`` scores)
must fail the very same test. The checks are the shipped kit's (:mod:`fractalkit.testing`).
"""

from __future__ import annotations

import pytest
import torch

from contract.examples import BY_NAME, EXAMPLES, Example, fixed_orders, labels_for
from fractalkit.data import all_configurations
from fractalkit.testing import (
    InconclusiveCheck,
    check_callback,
    check_completion,
    check_completion_law,
    check_sampler,
    check_seeded_sampling,
    chi_square,
    chi_square_p_value,
    completion_chi_square,
    likelihood_law,
    sample_histogram,
    sampler_chi_square,
    sampling_law,
    support,
)

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
    check_sampler(
        example.build(torch.float32), _label(example), num_samples=SAMPLES, seed=0, orders=orders,
        alpha=ALPHA_CORRECT, min_cells=10,
    )


@pytest.mark.parametrize("example", MORE, ids=repr)
def test_samples_follow_exp_log_prob_more_samples(example: Example) -> None:
    orders = fixed_orders(example.build(), seed=21)
    check_sampler(
        example.build(torch.float32), _label(example), num_samples=20000, seed=1, orders=orders,
        alpha=ALPHA_CORRECT, min_cells=1,
    )


@pytest.mark.parametrize("name", ["ar_ar", "mar_mar_cond"])
def test_tempered_samples_follow_the_tempered_law_not_exp_log_prob(name: str) -> None:
    """At T = 0.7 the samples follow the product of tempered conditionals, and the plain
    ``exp(log_prob)`` test rejects them: the chi-square test sees a broken temperature."""
    example = BY_NAME[name]
    model = example.build(torch.float32)
    orders = fixed_orders(model, seed=21)
    counts = sample_histogram(model, _label(example), num_samples=SAMPLES, seed=0, orders=orders, temperature=0.7)
    tempered = chi_square(counts, sampling_law(model, _label(example), orders=orders, temperature=0.7))
    assert tempered.p_value > ALPHA_CORRECT and tempered.cells >= 10, tempered
    plain = chi_square(counts, likelihood_law(model, _label(example), orders))
    assert plain.p_value < ALPHA_BROKEN, plain


@pytest.mark.parametrize(
    ("name", "scale", "schedule", "schedule_matters"),
    [
        ("ar_rgb_cond", 2.0, "constant", True),
        ("ar_rgb_cond", 2.0, "linear", True),
        ("ar_mar_ar_cond", 3.0, "linear", False),  # 4,000 samples barely see the schedule here
        pytest.param("mar_mar_cond", 3.0, "linear", True, marks=pytest.mark.slow),
        pytest.param("mar_mar_cond", 3.0, "constant", True, marks=pytest.mark.slow),
    ],
)
def test_guided_samples_follow_the_guided_law(
    name: str, scale: float, schedule: str, schedule_matters: bool
) -> None:
    """Classifier-free guidance (the filter on) on its schedule, against its exact law; the same
    samples are far from the unguided law and (where 4,000 samples have the power) from the
    other schedule's law."""
    model = BY_NAME[name].build(torch.float32)
    orders = fixed_orders(model, seed=21)
    options = {"guidance": scale, "guidance_schedule": schedule}
    counts = sample_histogram(model, 1, num_samples=SAMPLES, seed=0, orders=orders, **options)
    law = sampling_law(model, 1, orders=orders, **options)
    result = chi_square(counts, law)
    assert result.p_value > ALPHA_CORRECT and result.cells >= 10, result
    unguided = chi_square(counts, likelihood_law(model, 1, orders))
    assert unguided.p_value < ALPHA_BROKEN, unguided
    if schedule_matters:
        other = "linear" if schedule == "constant" else "constant"
        law = sampling_law(model, 1, orders=orders, guidance=scale, guidance_schedule=other)
        wrong = chi_square(counts, law)
        assert wrong.p_value < ALPHA_BROKEN, wrong


def test_wrong_order_breaks_the_test() -> None:
    example = BY_NAME["mar_mar"]
    model = example.build(torch.float32)
    law = likelihood_law(model, None, fixed_orders(model, seed=21))
    result = sampler_chi_square(model, None, num_samples=SAMPLES, seed=0, orders="identity", law=law)
    assert result.p_value < ALPHA_BROKEN, result


def test_guiding_pixel_samples_follow_the_marginal() -> None:
    """With a guiding pixel, samples are x ~ sum_g p(g) p(x | g); check against that marginal."""
    example = BY_NAME["mar_guide_top"]
    model = example.build(torch.float64)
    level = model.levels[0]
    xs = support(model)
    guides = all_configurations((level.event_shape[0],), model.num_values)  # every guiding pixel
    joint = []
    original = level.summary.target
    try:
        for g in guides:  # log p(g) + log p(x | g) for every x, g
            level.summary.target = lambda x, g=g: g.expand(x.shape[0], -1)
            with torch.no_grad():
                joint.append(model.log_prob(xs, orders="identity").value)
    finally:
        level.summary.target = original
    marginal = torch.stack(joint).logsumexp(0).exp()  # [V**E]
    samples = example.build(torch.float32)
    result = sampler_chi_square(samples, None, num_samples=SAMPLES, seed=3, orders="identity", law=marginal)
    assert result.p_value > ALPHA_CORRECT, result
    # The bound's exp(log_prob) is not the sampling distribution: the test can tell them apart.
    bound = likelihood_law(model, None, "identity")
    wrong = sampler_chi_square(samples, None, num_samples=SAMPLES, seed=3, orders="identity", law=bound / bound.sum())
    assert wrong.p_value < ALPHA_BROKEN


# ---- reproducibility ---------------------------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES, ids=repr)
def test_seeded_sampling_is_reproducible(example: Example) -> None:
    """Same seed, same samples; another seed, others; the KV cache changes nothing, not even
    the random stream's use."""
    check_seeded_sampling(example.build(torch.float32), labels_for(example, 8, seed=1), seed=5)


@pytest.mark.parametrize("example", EXAMPLES, ids=repr)
def test_callback_reports_every_top_step(example: Example) -> None:
    """The progress callback, with a linear guidance schedule on conditional rows."""
    options = {"guidance": 2.0, "guidance_schedule": "linear"} if example.num_classes else {}
    model = example.build(torch.float32)
    check_callback(model, labels_for(example, 4, seed=2), **options)


# ---- completion --------------------------------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES, ids=repr)
def test_completion_keeps_known_elements(example: Example) -> None:
    """Random masks (30% and 80% known) keep the known values; all known returns x."""
    check_completion(example.build(torch.float32), seed=8, fractions=(0.3, 0.8))


def test_ar_completion_of_a_prefix_is_exact() -> None:
    """AR: known = a prefix of the patch-then-pixel-then-channel order (pixel 0, then pixel 1's
    first channel; event (C=2, 2, 2)). Elements in that order: (pixel j, channel c)."""
    example = BY_NAME["ar_ar"]
    known = torch.zeros(2, 2, 2, dtype=torch.bool)
    known[:, 0, 0] = True  # pixel 0, both channels
    known[0, 0, 1] = True  # pixel 1, channel 0
    check_completion_law(
        example.build(torch.float32), known, None, num_samples=SAMPLES, seed=12, alpha=ALPHA_CORRECT
    )


def test_mar_completion_of_full_children_is_exact() -> None:
    """MAR: known = full top-level children 0 and 2; decoding puts them first, so the
    completions follow the model of the order (0, 2, 1, 3) at the top, identity below."""
    example = BY_NAME["mar_mar_cond"]
    known = torch.zeros(2, 2, 2, dtype=torch.bool)
    known[:, 0, 0] = True  # child 0 (pixel (0, 0))
    known[:, 1, 0] = True  # child 2 (pixel (1, 0))
    check_completion_law(
        example.build(torch.float32), known, _label(example), num_samples=SAMPLES, seed=13,
        orders="identity", law_orders=[torch.tensor([0, 2, 1, 3]), "identity"], alpha=ALPHA_CORRECT,
    )


@pytest.mark.parametrize("name", ["ar_ar_cond", "mar_ar_mar"])
def test_prefix_completion_with_temperature_and_guidance(name: str) -> None:
    """The kit's default mask (the first half of the top-level children in decoding order),
    completed at T = 0.8 (and w = 2 on conditional rows), against the shaped conditional law."""
    example = BY_NAME[name]
    options = {"temperature": 0.8, **({"guidance": 2.0} if example.num_classes else {})}
    try:
        check_completion_law(
            example.build(torch.float32), None, _label(example), num_samples=SAMPLES, seed=14,
            alpha=ALPHA_CORRECT, **options,
        )
    except InconclusiveCheck:
        # The shaped conditional puts > 99.9% on one completion: one chi-square cell, no power
        # (before InconclusiveCheck this passed silently). Only the rows listed may do that.
        assert name in DEGENERATE_COMPLETION, f"{name}: the completion law test has no power"


#: rows whose prefix-completion law at T = 0.8, w = 2 is a single cell (seed 14)
DEGENERATE_COMPLETION = {"ar_ar_cond"}


def test_completion_test_detects_a_broken_sampler() -> None:
    example = BY_NAME["ar_ar"]
    model = example.build(torch.float32)
    known = torch.zeros(2, 2, 2, dtype=torch.bool)
    known[:, 0, 0] = True
    result = completion_chi_square(
        model, known, None, num_samples=SAMPLES, seed=12, law=likelihood_law(model, None, "identity"),
        temperature=0.7,
    )
    assert result.p_value < ALPHA_BROKEN, result
