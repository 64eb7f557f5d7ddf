"""Decomposition: the teacher-forced log_prob equals the sum of per-step log-probabilities
collected along the sampling path (an independent implementation), and KV-cached AR decoding
gives the same logits as recomputing the prefix. float64, exact orders."""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.examples import BY_NAME, EXAMPLES, Example, fixed_orders, labels_for, random_data
from fractalkit.levels import MARLevel

N = 6


def _order_specs(model, n: int) -> dict[str, object]:
    """Named order specifications: identity, shared random permutations, per-instance at the top."""
    specs: dict[str, object] = {"identity": "identity", "shared": fixed_orders(model, seed=1)}
    top = model.levels[0]
    if isinstance(top, MARLevel):
        g = torch.Generator().manual_seed(2)
        per_instance = torch.rand(n, top.num_children, generator=g).argsort(-1)  # [N, L]
        specs["per_instance"] = [per_instance, *fixed_orders(model, seed=3)[1:]]
    return specs


@pytest.mark.parametrize("example", EXAMPLES, ids=repr)
def test_log_prob_equals_stepwise_sum(example: Example) -> None:
    model = example.build(torch.float64)
    x = random_data(model, N, seed=4)
    y = labels_for(example, N, seed=5)
    for name, orders in _order_specs(model, N).items():
        with torch.no_grad():
            lp = model.log_prob(x, y, orders=orders)
        steps = model.stepwise_log_prob(x, y, orders=orders, kv_cache=True)
        assert lp.value.dtype == torch.float64 and steps.dtype == torch.float64
        assert lp.kind == ("bound" if example.bound else "exact"), name
        assert lp.value.shape == (N,)
        torch.testing.assert_close(lp.value, steps, rtol=0, atol=1e-9, msg=f"orders={name}")
        assert bool((lp.value < 0).all())


@pytest.mark.parametrize("example", [e for e in EXAMPLES if "mar" in e.tags], ids=repr)
def test_log_prob_depends_on_the_order(example: Example) -> None:
    """The order really reaches the MAR levels (else the tests above would prove little)."""
    model = example.build(torch.float64)
    x = random_data(model, N, seed=4)
    y = labels_for(example, N, seed=5)
    with torch.no_grad():
        a = model.log_prob(x, y, orders="identity").value
        b = model.log_prob(x, y, orders=fixed_orders(model, seed=1)).value
        reverse = [
            None if o is None else torch.arange(len(o)).flip(0) for o in fixed_orders(model, seed=1)
        ]
        c = model.log_prob(x, y, orders=reverse).value
    assert float((a - b).abs().max()) > 1e-6 or float((a - c).abs().max()) > 1e-6


def _record_leaf_logits(model) -> list[torch.Tensor]:
    """Wrap the leaf's ``element_logits`` so every call's output is appended to a list."""
    leaf = model.leaf
    calls: list[torch.Tensor] = []
    original = leaf.element_logits

    def recording(x, cond):
        out = original(x, cond)
        calls.append(out.detach().clone())
        return out

    leaf.element_logits = recording  # instance attribute shadows the method
    return calls


@pytest.mark.parametrize("example", [e for e in EXAMPLES if "ar" in e.tags], ids=repr)
def test_kv_cache_gives_the_same_logits(example: Example) -> None:
    x_model = example.build(torch.float64)
    x = random_data(x_model, N, seed=6)
    y = labels_for(example, N, seed=7)
    results = {}
    for kv in (True, False):
        model = example.build(torch.float64)
        calls = _record_leaf_logits(model)
        total = model.stepwise_log_prob(x, y, orders="identity", kv_cache=kv)
        results[kv] = (total, calls)
    (cached, cached_calls), (plain, plain_calls) = results[True], results[False]
    assert len(cached_calls) == len(plain_calls) > 0
    for a, b in zip(cached_calls, plain_calls, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(cached, plain, rtol=0, atol=1e-6)
    # And both equal the teacher-forced likelihood.
    with torch.no_grad():
        lp = x_model.log_prob(x, y, orders="identity").value
    torch.testing.assert_close(lp, cached, rtol=0, atol=1e-9)


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
        torch.randperm(level.num_children, generator=g) if isinstance(level, MARLevel) else None
        for level in model.levels[:-1]
    ]
    with torch.no_grad():
        lp = model.log_prob(x, y, orders=orders).value
    torch.testing.assert_close(lp, model.stepwise_log_prob(x, y, orders=orders), rtol=0, atol=1e-9)


@functools.lru_cache(maxsize=1)
def _mixed_model():
    """The 3-level AR/MAR/AR model of the test above, built once."""
    return BY_NAME["ar_mar_ar_cond"].build(torch.float64)
