"""Condition dropout: in training mode a conditioner replaces whole conditions by its null
condition at its configured rate (what classifier-free guidance's unconditional half is
trained on); without ``drop`` it never does.

Shape letters: N instances, T condition tokens, D the top level's width.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fractalkit.fractal import Fractal
from fractalkit.testing.conditions import conditional, random_conditions
from fractalkit.testing.report import ALPHA, CheckResult, ContractError, fail
from fractalkit.testing.stats import chi_square
from fractalkit.testing.support import check_model

__all__ = ["check_condition_dropout"]


def check_condition_dropout(
    model: Fractal,
    *,
    conditions: Sequence[Any] | None = None,
    num_instances: int = 2000,
    seed: int = 0,
    alpha: float = ALPHA,
) -> CheckResult:
    """The conditioner's dropout substitutes its null condition, at its ``drop`` rate, only
    when asked (``drop=True``, what :meth:`fractalkit.Fractal.loss` passes in training mode).

    Embeds ``num_instances`` random example conditions with ``Fractal.top_condition``: without
    dropout no row may equal the null condition ``top_condition(None)``; with dropout the
    rows equal to it (exactly) must be a ``drop`` fraction, by a two-cell chi-square. Per-part
    dropout (e.g. :class:`fractalkit.Vector`'s ``feature_drop``) may change the other rows.

    Args:
        model: a conditional :class:`fractalkit.Fractal` whose conditioner has a null condition.
        conditions: example conditions, each for one instance (see
            :func:`~fractalkit.testing.check_normalisation`).
        num_instances, seed: the rows embedded and the dropout's random stream.
        alpha: the p-value must exceed this.

    Returns:
        :class:`CheckResult` with the fraction of rows replaced by the null condition.

    Raises:
        ContractError: rows replaced without ``drop``, or a replacement rate off ``drop``
            (e.g. dropout that substitutes zeros or a fixed condition instead of the null).
        ValueError: an unconditional model, or a conditioner without a null condition.
    """
    check_model(model, "check_condition_dropout")
    if not conditional(model) or not model.conditioner.has_null:
        raise ValueError(
            "check_condition_dropout: needs a conditional model whose conditioner has a null "
            "condition"
        )
    rate = float(model.conditioner.drop)
    n = num_instances
    c = random_conditions(model, n, seed=seed, conditions=conditions)
    with torch.no_grad():
        null = model.top_condition(None, n)  # [N, T, D]
        plain = model.top_condition(c, n)
        dropped = model.top_condition(c, n, drop=True, generator=torch.Generator().manual_seed(seed))

    def is_null(e: torch.Tensor) -> torch.Tensor:
        return (e == null.to(e.dtype)).flatten(1).all(1)  # [N]

    if bool(is_null(plain).any()):
        raise ContractError(
            f"check_condition_dropout failed: {int(is_null(plain).sum())} of {n} conditions "
            "became the null condition without drop=True. Likely cause: the conditioner drops "
            "conditions in evaluation too, or an example condition embeds as the null one"
        )
    hits = int(is_null(dropped).sum())
    if rate == 0:
        if hits:
            raise fail("check_condition_dropout", "rows replaced by the null with drop = 0",
                       hits, "0", "the conditioner drops conditions it was told not to")
        return CheckResult("check_condition_dropout", 0.0, 0.0, "drop = 0: nothing dropped")
    result = chi_square(
        torch.tensor([hits, n - hits]), torch.tensor([rate, 1 - rate], dtype=torch.float64)
    )
    if not result.p_value > alpha:
        raise fail(
            "check_condition_dropout", f"{hits} of {n} rows replaced by the null condition with "
            f"drop = {rate}: chi-square p-value", result.p_value, f"> {alpha:g}",
            "dropout substitutes something other than the learned null condition (zeros, a "
            "fixed condition), so the unconditional half of guidance reads a condition it was "
            "never trained on; or the dropout rate is not the configured one",
        )
    return CheckResult("check_condition_dropout", hits / n, rate, f"p-value {result.p_value:.3g}")
