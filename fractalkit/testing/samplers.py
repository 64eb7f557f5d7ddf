"""Samplers against exact laws: chi-square tests (rare cells pooled) of sample histograms over
the support against :func:`~fractalkit.testing.laws.sampling_law`, for sampling and for
exact-prefix completion.

Shape letters: N samples, C = V**E configurations.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from fractalkit.fractal import Fractal
from fractalkit.protocol import SampleOptions
from fractalkit.testing.conditions import describe, one_condition, repeat_condition
from fractalkit.testing.laws import sampling_law
from fractalkit.testing.likelihood import is_bound
from fractalkit.testing.report import ALPHA, ContractError, fail, inconclusive
from fractalkit.testing.stats import ChiSquare, chi_square
from fractalkit.testing.support import (
    check_model,
    decoding_order,
    fixed_orders,
    num_configurations,
    partitioners,
    support,
    support_index,
)

__all__ = [
    "check_completion_law",
    "check_sampler",
    "completion_chi_square",
    "partial_prefix_known",
    "prefix_known",
    "sample_histogram",
    "sampler_chi_square",
]


def _sample_law(model: Fractal, c: Any, orders: object, options: SampleOptions) -> Tensor:
    if options.steps is not None and any(s not in (None, 1) for s in options.steps):
        raise ValueError(
            "fractalkit.testing: the sampler's law is only known in exact mode (one child per "
            f"step, steps=None), got steps={options.steps}"
        )
    if is_bound(model, c):
        raise ValueError(
            "fractalkit.testing: this model's log_prob is a bound (a summary such as a guiding "
            "pixel is sampled, not scored exactly), so its sampling law is not exp(log_prob); "
            "pass the law yourself (law=...)"
        )
    return sampling_law(
        model, c, orders=orders, temperature=options.temperature, guidance=options.guidance,
        guidance_schedule=options.guidance_schedule, filter_threshold=options.filter_threshold,
    )


def _orders_or_default(model: Fractal, orders: object) -> object:
    """The sampler checks' default: shared random orders (seed 21), under which MAR is exact."""
    return fixed_orders(model, seed=21) if orders is None else orders


def sampler_chi_square(
    model: Fractal,
    c: Any = None,
    *,
    y: int | None = None,
    num_samples: int = 4000,
    seed: int = 0,
    orders: object = None,
    law: Tensor | None = None,
    **options: Any,
) -> ChiSquare:
    """Draw ``num_samples`` and test their histogram over the support against a law.

    Args:
        model: a model with an enumerable support; sampled as given (e.g. float32).
        c: the condition of every sample, given for one instance (see
            :mod:`fractalkit.testing.conditions`; an int is a class label), or None (the null
            condition).
        y: the class-label spelling of ``c`` (an int).
        num_samples, seed: the draw.
        orders: shared orders for sampling and the law; default :func:`fixed_orders` (seed 21).
        law: float ``[C]``; default: :func:`~fractalkit.testing.laws.sampling_law` with the same
            options (computed on a float64 copy).
        **options: :class:`fractalkit.SampleOptions` fields (temperature, guidance, ...).

    Returns:
        The :class:`~fractalkit.testing.stats.ChiSquare` (p-value included); asserts nothing.
    """
    check_model(model, "sampler_chi_square")
    c = one_condition(model, c, y, "sampler_chi_square")
    orders = _orders_or_default(model, orders)
    if law is None:
        law = _sample_law(model, c, orders, SampleOptions.make(None, **options))
    counts = sample_histogram(model, c, num_samples=num_samples, seed=seed, orders=orders, **options)
    return chi_square(counts, law)


def sample_histogram(
    model: Fractal,
    c: Any = None,
    *,
    y: int | None = None,
    num_samples: int = 4000,
    seed: int = 0,
    orders: object = None,
    **options: Any,
) -> Tensor:
    """Counts of ``num_samples`` draws per configuration of the support: int64 ``[C]``.

    Arguments as in :func:`sampler_chi_square`; test the counts against several laws with
    :func:`~fractalkit.testing.stats.chi_square` without drawing again.
    """
    check_model(model, "sample_histogram")
    c = one_condition(model, c, y, "sample_histogram")
    orders = _orders_or_default(model, orders)
    g = torch.Generator().manual_seed(seed)
    samples = model.sample(num_samples, repeat_condition(c, num_samples), generator=g, orders=orders, **options)
    return torch.bincount(support_index(samples, model), minlength=num_configurations(model))


def check_sampler(
    model: Fractal,
    c: Any = None,
    *,
    y: int | None = None,
    num_samples: int = 4000,
    seed: int = 0,
    orders: object = None,
    law: Tensor | None = None,
    alpha: float = ALPHA,
    min_cells: int = 10,
    **options: Any,
) -> ChiSquare:
    """Samples follow the model's law: chi-square (small cells pooled) against
    :func:`~fractalkit.testing.laws.sampling_law`, which is ``exp(log_prob)`` at temperature 1
    without guidance, and the tempered/guided product of conditionals otherwise.

    Order-taking (MAR) levels sample in the exact mode (one child per step) under shared fixed
    orders, where their law is known. Arguments as in :func:`sampler_chi_square`.

    Args:
        alpha: the p-value must exceed this (a correct sampler fails once per 1/alpha seeds).
        min_cells: the test needs at least this many cells after pooling to have power.

    Returns:
        The :class:`~fractalkit.testing.stats.ChiSquare`.

    Raises:
        ContractError: p-value at most ``alpha``.
        InconclusiveCheck: fewer than ``min_cells`` cells after pooling: the model is too
            peaked for the test to have power (not a failure of the component).
    """
    c = one_condition(model, c, y, "check_sampler")
    result = sampler_chi_square(
        model, c, num_samples=num_samples, seed=seed, orders=orders, law=law, **options
    )
    what = f"{describe(c)}, options={options or 'defaults'}"
    if result.cells < min_cells:  # no power: says nothing against the sampler
        raise inconclusive(
            "check_sampler", f"{what}: cells after pooling", result.cells, f">= {min_cells}",
            "too few samples or too peaked a model for the test to have power: draw more "
            "samples (num_samples), lower the guidance, or use a less peaked model (a smaller "
            "tiny_fractal scale) or one with more configurations",
        )
    if not result.p_value > alpha:
        raise fail(
            "check_sampler", f"{what}: chi-square p-value of {num_samples} samples against the "
            f"model's law (statistic {result.statistic:.1f}, {result.dof} dof)", result.p_value,
            f"> {alpha:g}", "the sampler does not draw from the distribution log_prob scores: a "
            "leaf's sampling path differs from its element_logits, temperature or guidance is "
            "applied wrongly or ignored, or decoding visits children in another order than the "
            "one given",
        )
    return result


def prefix_known(model: Fractal, orders: object = "identity", fraction: float = 0.5) -> Tensor:
    """A known-mask made of the first top-level children in decoding order: bool ``[*event_shape]``.

    Fully known top-level children decided first make completion exact for any level kind.
    """
    k = partitioners(model)[0].num_children
    count = max(1, min(k - 1, round(k * fraction)))
    numel = math.prod(model.event_shape)
    first = decoding_order(model, orders)[: count * (numel // k)]
    known = torch.zeros(numel, dtype=torch.bool)
    known[first] = True
    return known.view(model.event_shape)


def partial_prefix_known(model: Fractal, orders: object = "identity") -> Tensor | None:
    """A known-mask that ends inside a top-level child: bool ``[*event_shape]``, or None.

    The first top-level child in decoding order is known whole, and the next one in part: its
    first half, in decoding order (at least one element). So every level below the top (and
    the leaf) decodes an instance whose first children (elements) are known and the rest not:
    completion there is exact, and a cache that does not advance over known children (a
    stale cache) draws from another law. None when a top-level child has a single element
    (there is nothing to know in part).
    """
    k = partitioners(model)[0].num_children
    numel = math.prod(model.event_shape)
    per_child = numel // k
    if per_child < 2 or k < 2:
        return None
    first = decoding_order(model, orders)[: per_child + max(1, per_child // 2)]
    known = torch.zeros(numel, dtype=torch.bool)
    known[first] = True
    return known.view(model.event_shape)


def completion_chi_square(
    model: Fractal,
    known: Tensor | None = None,
    c: Any = None,
    *,
    y: int | None = None,
    orders: object = None,
    law_orders: object = None,
    law: Tensor | None = None,
    num_samples: int = 4000,
    seed: int = 0,
    **options: Any,
) -> ChiSquare:
    """Complete one instance ``num_samples`` times and test the completions against the law
    restricted to the configurations that agree with the known elements.

    Args:
        model: a model with an enumerable support; sampled as given.
        known: bool ``[*event_shape]`` (default: :func:`prefix_known`); the instance is drawn
            uniformly from the support with ``seed``.
        c: the condition, for one instance (an int is a class label; None: the null one).
        y: the class-label spelling of ``c`` (an int).
        orders: orders passed to ``complete`` (default :func:`fixed_orders`, seed 21).
        law_orders: orders of the law (default ``orders``); completion puts known MAR children
            first, so a non-prefix mask needs the reordered law.
        law: float ``[C]`` full law (default: :func:`sampling_law` with ``options``).
        **options: :class:`fractalkit.SampleOptions` fields.

    Returns:
        The :class:`~fractalkit.testing.stats.ChiSquare` over the consistent configurations.

    Raises:
        ContractError: a completion changed a known element.
    """
    check_model(model, "completion_chi_square")
    c = one_condition(model, c, y, "completion_chi_square")
    orders = _orders_or_default(model, orders)
    law_orders = orders if law_orders is None else law_orders
    if known is None:
        known = prefix_known(model, orders)
    if law is None:
        law = _sample_law(model, c, law_orders, SampleOptions.make(None, **options))
    xs = support(model)
    g = torch.Generator().manual_seed(seed)
    x = xs[torch.randint(len(xs), (1,), generator=g)]  # [1, *event]
    known = known.view(1, *model.event_shape)
    consistent = (xs[:, known[0]] == x[:, known[0]]).all(-1)  # [C]
    out = model.complete(
        x.expand(num_samples, *x.shape[1:]), known.expand(num_samples, *known.shape[1:]),
        repeat_condition(c, num_samples), generator=torch.Generator().manual_seed(seed),
        orders=orders, **options,
    )
    index = support_index(out, model)
    cell_of = torch.full((len(xs),), -1, dtype=torch.long)
    cell_of[consistent] = torch.arange(int(consistent.sum()))
    if not bool((cell_of[index] >= 0).all()):
        raise ContractError("completion_chi_square failed: a completion changed a known element")
    counts = torch.bincount(cell_of[index], minlength=int(consistent.sum()))
    return chi_square(counts, law[consistent])


def check_completion_law(
    model: Fractal,
    known: Tensor | None = None,
    c: Any = None,
    *,
    y: int | None = None,
    alpha: float = ALPHA,
    min_cells: int = 2,
    **kwargs: Any,
) -> ChiSquare:
    """Completion of known elements that come first in the decoding order is an exact draw from
    the model's conditional. Arguments as in :func:`completion_chi_square`.

    Args:
        alpha: the p-value must exceed this.
        min_cells: the test needs at least this many cells after pooling (2: one degree of
            freedom).

    Raises:
        ContractError: p-value at most ``alpha``.
        InconclusiveCheck: fewer than ``min_cells`` cells after pooling (too peaked a
            conditional for the test to have power).
    """
    c = one_condition(model, c, y, "check_completion_law")
    result = completion_chi_square(model, known, c, **kwargs)
    if result.cells < min_cells:
        raise inconclusive(
            "check_completion_law", f"{describe(c)}: cells after pooling", result.cells,
            f">= {min_cells}", "the conditional law is too peaked for the test to have power: "
            "draw more samples or use a less peaked model",
        )
    if not result.p_value > alpha:
        raise fail(
            "check_completion_law", f"{describe(c)}: chi-square p-value of completions against the "
            f"conditional law (statistic {result.statistic:.1f}, {result.dof} dof)",
            result.p_value, f"> {alpha:g}", "completion does not condition on the known "
            "elements the way the likelihood does (known children not teacher-forced, or not "
            "placed first in the order), or the sampler itself is wrong (see check_sampler)",
        )
    return result
