"""Helpers shared by the sampling tests: frequencies of samples over an enumerated space."""

from __future__ import annotations

import torch

from contract.examples import Example
from contract.stats import ChiSquare, chi_square
from fractalkit.data import all_configurations, configuration_index


def model_probabilities(model, y: int | None, orders) -> torch.Tensor:
    """``exp(log_prob)`` of every configuration (float64 ``[V**E]``), for label ``y``."""
    xs = all_configurations(model.event_shape, model.num_values)
    labels = None if y is None else torch.full((len(xs),), y)
    with torch.no_grad():
        return model.double().log_prob(xs, labels, orders=orders).value.exp()


def sample_counts(model, n: int, y: int | None, *, seed: int, **kwargs) -> torch.Tensor:
    """Counts ``[V**E]`` of ``n`` samples per configuration (label ``y`` for all of them)."""
    labels = None if y is None else torch.full((n,), y)
    g = torch.Generator().manual_seed(seed)
    samples = model.sample(n, labels, generator=g, **kwargs)
    cells = model.num_values ** samples[0].numel()
    return torch.bincount(configuration_index(samples, model.num_values), minlength=cells)


def sampling_test(
    example: Example, n: int, *, y: int | None, seed: int, log_prob_orders, **sample_kwargs
) -> ChiSquare:
    """Chi-square of ``n`` float32 samples against the float64 ``exp(log_prob)`` of the same weights."""
    probs = model_probabilities(example.build(torch.float64), y, log_prob_orders)
    counts = sample_counts(example.build(torch.float32), n, y, seed=seed, **sample_kwargs)
    return chi_square(counts, probs)
