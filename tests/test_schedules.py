"""Schedules and random draws: MAR decoding counts, training mask counts, guidance schedules,
order resolution, masked subsets and the seeded random helpers (the layers:
tests/test_layers.py)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fractalkit.sampling.orders import masked_subset, resolve_orders
from fractalkit.sampling.rng import random_orders, sample_categorical, truncated_normal
from fractalkit.sampling.schedules import decode_counts, guidance_at, training_mask_counts

# ---- schedules ---------------------------------------------------------------------------------


@given(unknown=st.lists(st.integers(0, 300), min_size=1, max_size=6), steps=st.integers(1, 70))
def test_decode_counts_cosine_rows_sum_and_decide_at_least_one(unknown: list[int], steps: int) -> None:
    u = torch.tensor(unknown)
    counts = decode_counts(u, steps)
    assert counts.shape == (len(unknown), steps)
    assert torch.equal(counts.sum(1), u)
    assert bool((counts >= 0).all())
    # At least one child per step while any remain undecided.
    remaining = u[:, None] - counts.cumsum(1) + counts  # before each step
    assert bool((counts[remaining > 0] >= 1).all())


@given(unknown=st.lists(st.integers(0, 50), min_size=1, max_size=6))
def test_decode_counts_exact_mode_is_one_per_step(unknown: list[int]) -> None:
    u = torch.tensor(unknown)
    counts = decode_counts(u, None)
    assert counts.shape == (len(unknown), max(unknown))
    assert torch.equal(counts.sum(1), u)
    assert bool(((counts == 0) | (counts == 1)).all())
    with pytest.raises(ValueError, match="steps"):
        decode_counts(u, 0)


def test_decode_counts_follow_the_cosine_curve() -> None:
    counts = decode_counts(torch.tensor([256]), 8)[0]
    remaining = 256 - counts.cumsum(0)
    expected = [math.floor(256 * math.cos(math.pi / 2 * (s + 1) / 8)) for s in range(8)]
    assert remaining.tolist() == expected  # ends at 0
    # Few children, many steps: one per step until none remain.
    assert decode_counts(torch.tensor([3]), 5).tolist() == [[1, 1, 1, 0, 0]]


def test_training_mask_counts_lie_in_range_and_are_seeded() -> None:
    for length in (1, 4, 256):
        counts = training_mask_counts(5000, length, generator=torch.Generator().manual_seed(0), device="cpu")
        assert counts.dtype == torch.int64 and counts.shape == (5000,)
        assert int(counts.min()) >= 1 and int(counts.max()) <= length
    again = training_mask_counts(5000, 256, generator=torch.Generator().manual_seed(0), device="cpu")
    assert torch.equal(again, counts)
    # The ratio r ~ TruncNormal(1, 0.25, [0, 1]): mean 1 - 0.25 * sqrt(2 / pi) = 0.80.
    ratio = truncated_normal(20000, loc=1.0, scale=0.25, low=0.0, high=1.0, generator=torch.Generator().manual_seed(1), device="cpu")
    assert float(ratio.min()) >= 0 and float(ratio.max()) <= 1
    assert float(ratio.mean()) == pytest.approx(1 - 0.25 * math.sqrt(2 / math.pi), abs=0.01)


def test_training_mask_counts_follow_the_truncated_normal_and_the_seed():
    gen = torch.Generator().manual_seed(0)
    counts = training_mask_counts(20000, 256, generator=gen, device="cpu")
    # E[r] for N(1, 0.25) truncated to [0, 1] is 1 - 0.25 phi(0) / (Phi(0) - Phi(-4)) = 0.80053;
    # ceil adds about half a child.
    expected = 1 - 0.25 * (1 / math.sqrt(2 * math.pi)) / (0.5 - 0.5 * math.erfc(4 / math.sqrt(2)))
    ratio = counts.double().mean() / 256
    assert float(ratio) == pytest.approx(expected + 0.5 / 256, abs=0.005)
    again = training_mask_counts(20000, 256, generator=torch.Generator().manual_seed(0), device="cpu")
    assert torch.equal(counts, again)


def test_guidance_schedule() -> None:
    assert guidance_at(4.0, "constant", 0.1) == 4.0
    assert guidance_at(4.0, "linear", 1.0) == 4.0  # the last step uses the full scale
    assert guidance_at(4.0, "linear", 0.5) == pytest.approx(2.5)
    with pytest.raises(ValueError, match="guidance_schedule"):
        guidance_at(4.0, "cosine", 0.5)  # type: ignore[arg-type]


# ---- orders and draws --------------------------------------------------------------------------


def test_resolve_orders() -> None:
    g = torch.Generator().manual_seed(0)
    ident = resolve_orders("identity", 3, 5, generator=None, device="cpu")
    assert torch.equal(ident, torch.arange(5).expand(3, 5))
    rand = resolve_orders("random", 3, 5, generator=g, device="cpu")
    assert torch.equal(rand.sort(-1).values, ident)
    many = resolve_orders("random", 64, 9, generator=torch.Generator().manual_seed(0), device="cpu")
    assert len({tuple(r) for r in many.tolist()}) > 50  # really one order per instance
    assert torch.equal(resolve_orders(None, 3, 5, generator=torch.Generator().manual_seed(0), device="cpu"), rand)
    shared = resolve_orders(torch.tensor([4, 3, 2, 1, 0]), 3, 5, generator=None, device="cpu")
    assert shared.shape == (3, 5) and shared.dtype == torch.int64
    per = torch.stack([torch.randperm(5, generator=g) for _ in range(3)])
    assert torch.equal(resolve_orders(per, 3, 5, generator=None, device="cpu"), per)
    with pytest.raises(ValueError, match="permutation"):
        resolve_orders(torch.tensor([0, 1, 1, 2, 3]), 3, 5, generator=None, device="cpu")
    with pytest.raises(ValueError, match=r"\[5\] or \[3, 5\]"):
        resolve_orders(torch.arange(4), 3, 5, generator=None, device="cpu")
    with pytest.raises(ValueError, match=r"\[5\] or \[3, 5\]"):
        resolve_orders(per[:2], 3, 5, generator=None, device="cpu")
    with pytest.raises(ValueError, match="identity"):
        resolve_orders("reversed", 3, 5, generator=None, device="cpu")
    with pytest.raises(TypeError, match="orders"):
        resolve_orders([0, 1, 2, 3, 4], 3, 5, generator=None, device="cpu")  # type: ignore[arg-type]


def test_masked_subset_takes_the_first_children_of_each_order() -> None:
    orders = torch.tensor([[2, 0, 1, 3], [3, 2, 1, 0]])
    mask = masked_subset(orders, torch.tensor([1, 3]))
    assert mask.tolist() == [[False, False, True, False], [False, True, True, True]]


def test_random_draws_are_uniform_orders_and_exact_categoricals() -> None:
    g = torch.Generator().manual_seed(3)
    orders = random_orders(24000, 3, generator=g, device="cpu")
    _, counts = torch.unique(orders, dim=0, return_counts=True)
    assert len(counts) == 6 and int(counts.min()) > 3600 and int(counts.max()) < 4400
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3]]).expand(40000, 4)
    draws = sample_categorical(probs, generator=torch.Generator().manual_seed(4))
    freq = torch.bincount(draws, minlength=4).double() / 40000
    assert int(freq[1]) == 0  # a zero-probability value is never drawn
    torch.testing.assert_close(freq, probs[0].double(), rtol=0, atol=0.01)
