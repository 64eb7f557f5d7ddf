"""The MAR estimate: over random orders and masks, ``log_prob(..., num_draws=...)`` is unbiased
for ``E_order[log p_order(x)]``, which is computed here exactly by enumerating every order
(shared permutations at each MAR level) on tiny models. float64."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from contract.examples import BY_NAME, labels_for, random_data
from fractalkit.testing import partitioners, uses_orders

INSTANCES = 3
ROWS = 400  # copies of each instance in the batch (each draws its own orders and masks)
DRAWS = 10  # num_draws per row


def exact_expectation(model, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """Mean of the exact log_prob over all combinations of one permutation per MAR level: ``[N]``."""
    per_level = []
    for part, flag in zip(partitioners(model), uses_orders(model), strict=True):
        if flag:
            perms = itertools.permutations(range(part.num_children))
            per_level.append([torch.tensor(p) for p in perms])
        else:
            per_level.append([None])
    values = []
    with torch.no_grad():
        for combo in itertools.product(*per_level):
            values.append(model.log_prob(x, y, orders=list(combo)).value)
    return torch.stack(values).mean(0)


@pytest.mark.parametrize("name", ["mar_mar", "mar_ar_mar", "mar_mar_cond"])
def test_estimate_is_unbiased_for_the_order_expectation(name: str) -> None:
    example = BY_NAME[name]
    model = example.build(torch.float64)
    x = random_data(model, INSTANCES, seed=31)
    y = labels_for(example, INSTANCES, seed=32)
    exact = exact_expectation(model, x, y)  # [N]

    rows = x.repeat_interleave(ROWS, 0)
    labels = None if y is None else y.repeat_interleave(ROWS)
    g = torch.Generator().manual_seed(33)
    with torch.no_grad():
        lp = model.log_prob(rows, labels, num_draws=DRAWS, generator=g)
    assert lp.kind == "estimate" and lp.num_draws == DRAWS
    values = lp.value.view(INSTANCES, ROWS)  # each entry: a mean of DRAWS draws
    estimate = values.mean(1)
    stderr = values.std(1) / math.sqrt(ROWS)
    # The reported per-row standard error agrees with the spread of the rows' means.
    reported = lp.stderr.view(INSTANCES, ROWS).pow(2).mean(1).sqrt()
    torch.testing.assert_close(reported, values.std(1), rtol=0.15, atol=0)
    z = (estimate - exact) / stderr
    assert bool((z.abs() < 3).all()), f"exact {exact.tolist()}, estimate {estimate.tolist()}, z {z.tolist()}"


def test_estimate_differs_from_a_single_order() -> None:
    """The order expectation is not one order's value (else the test above proves little)."""
    model = BY_NAME["mar_mar"].build(torch.float64)
    x = random_data(model, INSTANCES, seed=31)
    with torch.no_grad():
        identity = model.log_prob(x, orders="identity").value
    assert float((exact_expectation(model, x, None) - identity).abs().max()) > 1e-3
