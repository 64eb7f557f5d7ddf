"""Decomposition: the teacher-forced log_prob equals the sum of per-step log-probabilities
collected along the sampling path (an independent implementation), and KV-cached AR decoding
gives the same logits as recomputing the prefix. float64, exact orders. The checks are the
shipped kit's (:mod:`fractalkit.testing`)."""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.examples import BY_NAME, EXAMPLES, Example
from fractalkit.testing import (
    check_decomposition,
    check_kv_cache,
    check_orders_reach_levels,
    partitioners,
    uses_orders,
)


@pytest.mark.parametrize("example", EXAMPLES, ids=repr)
def test_log_prob_equals_stepwise_sum(example: Example) -> None:
    """Identity, shared random and (MAR top) per-instance orders; 6 random instances."""
    result = check_decomposition(
        example.build(torch.float64), atol=1e-9, expect_kind="bound" if example.bound else "exact"
    )
    assert result.figure <= 1e-9


@pytest.mark.parametrize("example", [e for e in EXAMPLES if "mar" in e.tags], ids=repr)
def test_log_prob_depends_on_the_order(example: Example) -> None:
    """The order really reaches the MAR levels (else the tests above would prove little)."""
    assert check_orders_reach_levels(example.build(torch.float64), min_gap=1e-6).figure > 1e-6


@pytest.mark.parametrize("example", [e for e in EXAMPLES if "ar" in e.tags], ids=repr)
def test_kv_cache_gives_the_same_logits(example: Example) -> None:
    """Same leaf logits at every step (1e-6), same totals, equal to log_prob (1e-9), same samples."""
    assert check_kv_cache(example.build(torch.float64), atol=1e-6).figure <= 1e-6


@settings(max_examples=10)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 5))
def test_decomposition_under_random_orders_and_data(seed: int, n: int) -> None:
    """Hypothesis draws the data, the batch size and every level's (per-instance) orders."""
    example = BY_NAME["ar_mar_ar_cond"]
    model = _mixed_model()
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, model.num_values, (n, *model.event_shape), generator=g)
    y = torch.randint(0, example.num_classes, (n,), generator=g)
    orders = [
        torch.randperm(p.num_children, generator=g) if flag else None
        for p, flag in zip(partitioners(model), uses_orders(model), strict=True)
    ]
    check_decomposition(model, x, y, orders=orders, atol=1e-9)


@functools.lru_cache(maxsize=1)
def _mixed_model():
    """The 3-level AR/MAR/AR model of the test above, built once."""
    return BY_NAME["ar_mar_ar_cond"].build(torch.float64)
