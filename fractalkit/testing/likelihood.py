"""Likelihood checks: normalisation over an enumerable support, decomposition (teacher-forced
``log_prob`` against the decoding path) and order dependence. Run on a float64 copy.

Shape letters: N instances, E elements, V values, C = V**E configurations, k children.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from fractalkit.fractal import Fractal
from fractalkit.testing.conditions import (
    batch_condition,
    conditional,
    describe,
    example_conditions,
    one_condition,
    random_conditions,
    repeat_condition,
)
from fractalkit.testing.report import CheckResult, ContractError, fail
from fractalkit.testing.support import (
    check_model,
    fixed_orders,
    float64_copy,
    partitioners,
    random_data,
    support,
    uses_orders,
)

__all__ = [
    "check_condition_reaches_model",
    "check_decomposition",
    "check_normalisation",
    "check_orders_reach_levels",
    "is_bound",
]


def _normalisation_conditions(
    model: Fractal, labels: object, conditions: Sequence[Any] | None
) -> list[Any]:
    """The conditions (each for one instance; None: the null one) normalisation is checked for."""
    if not (isinstance(labels, str) and labels == "all"):
        return [one_condition(model, c, None, "check_normalisation") for c in labels]  # type: ignore[attr-defined]
    examples = example_conditions(model, conditions, "check_normalisation")
    return ([None] if model.conditioner.has_null else []) + examples


def _order_specs(model: Fractal, orders: object, *, seed: int) -> dict[str, object]:
    """Named order specifications: given ones, or identity plus shared random permutations."""
    if isinstance(orders, Mapping):
        return dict(orders)
    if orders is not None:
        return {"given": orders}
    return {"identity": "identity", "shared": fixed_orders(model, seed=seed)}


def is_bound(model: Fractal, c: Any = None) -> bool:
    """Whether ``log_prob`` under fixed orders is a bound (e.g. a guiding pixel), not exact.

    Scored for one random instance under ``c`` (a condition for one instance; default: the null
    condition, or a default example condition for a conditioner without a null).
    """
    x = random_data(model, 1)
    if c is None and not model.conditioner.has_null:
        c = random_conditions(model, 1)
    with torch.no_grad():
        return model.log_prob(x, c, orders="identity").kind == "bound"


def check_normalisation(
    model: Fractal,
    *,
    labels: object = "all",
    orders: object = None,
    atol: float = 1e-6,
    seed: int = 11,
    conditions: Sequence[Any] | None = None,
) -> CheckResult:
    """The probabilities of every configuration sum to 1 (exact models) or to at most 1 (bounds).

    Enumerates the support (at most :data:`~fractalkit.testing.support.MAX_ENUMERABLE`
    configurations) and sums ``exp(log_prob)`` in float64, for the null condition, every
    example condition and every order specification. For a conditional model with two or more
    example conditions it also runs :func:`check_condition_reaches_model`.

    Args:
        model: any :class:`fractalkit.Fractal` with an enumerable support.
        labels: ``"all"`` (the null condition and every example condition) or a list of
            conditions, each for one instance (an int is a class label; None: the null one).
        conditions: example conditions, each for one instance (see
            :mod:`fractalkit.testing.conditions`); default: every class label, or a few
            vectors/sequences for the built-in conditioners (a user conditioner must give them).
        orders: None (``"identity"`` and :func:`fixed_orders` with ``seed``), one spec, or a
            ``{name: spec}`` mapping.
        atol: bound on ``|sum - 1|`` for exact models.
        seed: seed of the shared random orders.

    Returns:
        :class:`CheckResult` with the largest ``|sum - 1|`` (exact) or the largest sum (bound).

    Raises:
        ContractError: a sum off 1 (exact), above 1 or vanishing (bound), or conditions ignored.
    """
    check_model(model, "check_normalisation")
    model64 = float64_copy(model)
    xs = support(model64)
    worst, parts = 0.0, []
    bound = False
    for c in _normalisation_conditions(model64, labels, conditions):
        for name, spec in _order_specs(model64, orders, seed=seed).items():
            with torch.no_grad():
                lp = model64.log_prob(xs, repeat_condition(c, len(xs)), orders=spec)
            mass = float(lp.value.logsumexp(0).exp())
            where = f"{describe(c)}, orders={name}"
            parts.append(f"{where}: sum={mass:.15g}")
            if lp.kind == "bound":
                bound = True
                if mass > 1 + 1e-9:
                    raise fail(
                        "check_normalisation", f"{where}: a bound's probabilities sum to", mass,
                        "<= 1 + 1e-9", "the bound is not a bound: log p(g) + log p(x | g) "
                        "exceeds log p(x) somewhere, or a conditional is not normalised",
                    )
                if mass < 1e-3:
                    raise fail(
                        "check_normalisation", f"{where}: a bound's probabilities sum to", mass,
                        ">= 1e-3", "the bound is vacuous: the summary's model puts almost no mass "
                        "on the summaries the data have",
                    )
                worst = max(worst, mass)
                continue
            error = abs(math.expm1(float(lp.value.logsumexp(0))))
            worst = max(worst, error)
            if not error < atol:
                raise fail(
                    "check_normalisation", f"{where}: |sum of exp(log_prob) over all {len(xs)} "
                    f"configurations - 1| (sum = {mass:.12g})", error, f"{atol:g}",
                    "a leaf's logits are not normalised over the values, a level's conditions "
                    "leak the value being scored (future children or the child itself), or the "
                    "partitioner's split/merge is not a bijection",
                )
    if conditional(model64) and not bound and isinstance(labels, str) and labels == "all":
        examples = example_conditions(model64, conditions, "check_normalisation")
        if len(examples) >= 2:
            check_condition_reaches_model(model64, conditions=examples)
    return CheckResult("check_normalisation", worst, 1e-9 if bound else atol, "; ".join(parts))


def check_condition_reaches_model(
    model: Fractal, *, conditions: Sequence[Any] | None = None, min_gap: float = 1e-3
) -> CheckResult:
    """The condition reaches the model: the law over the support changes with the condition.

    Compares ``log_prob`` of every configuration (float64, identity orders) between every pair
    of example conditions, and between each example and the null condition (when there is one).

    Args:
        model: a conditional :class:`fractalkit.Fractal` with an enumerable support.
        conditions: two or more example conditions, each for one instance (default as in
            :func:`check_normalisation`).
        min_gap: every pair's largest ``|log p(x | a) - log p(x | b)|`` must exceed this.

    Returns:
        :class:`CheckResult` with the smallest such gap over the pairs.

    Raises:
        ContractError: two conditions (or a condition and the null) give the same law.
        ValueError: an unconditional model, or fewer than two example conditions.
    """
    check_model(model, "check_condition_reaches_model")
    if not conditional(model):
        raise ValueError("check_condition_reaches_model: the model is unconditional")
    examples = example_conditions(model, conditions, "check_condition_reaches_model")
    if len(examples) < 2:
        raise ValueError("check_condition_reaches_model: give at least two example conditions")
    model64 = float64_copy(model)
    xs = support(model64)
    cases = ([None] if model64.conditioner.has_null else []) + examples
    with torch.no_grad():
        tables = [
            model64.log_prob(xs, repeat_condition(c, len(xs)), orders="identity").value for c in cases
        ]
    smallest, parts = math.inf, []
    for i in range(len(cases)):
        for j in range(i + 1, len(cases)):
            both_impossible = torch.isneginf(tables[i]) & torch.isneginf(tables[j])  # off the support
            gap = float((tables[i] - tables[j]).masked_fill(both_impossible, 0.0).abs().max())
            smallest = min(smallest, gap)
            parts.append(f"{describe(cases[i], 24)} vs {describe(cases[j], 24)}: {gap:.3g}")
            if not gap > min_gap:
                raise fail(
                    "check_condition_reaches_model", f"largest |log p(x | {describe(cases[i])}) - "
                    f"log p(x | {describe(cases[j])})| over the support", gap, f"> {min_gap:g}",
                    "the condition never reaches the model (the conditioner ignores it, returns "
                    "its null for every condition, or a level drops its condition), two example "
                    "conditions are the same, or the model is so close to uniform that no check "
                    "has power (roughen it)",
                )
    return CheckResult("check_condition_reaches_model", smallest, min_gap, "; ".join(parts))


def _default_order_specs(model: Fractal, n: int) -> dict[str, object]:
    """Identity, shared random permutations, and per-instance orders at an order-taking top."""
    specs: dict[str, object] = {"identity": "identity", "shared": fixed_orders(model, seed=1)}
    if uses_orders(model)[0]:
        k = partitioners(model)[0].num_children
        g = torch.Generator().manual_seed(2)
        per_instance = torch.rand(n, k, generator=g).argsort(-1)  # [N, k]
        specs["per_instance"] = [per_instance, *fixed_orders(model, seed=3)[1:]]
    return specs


def check_decomposition(
    model: Fractal,
    x: Tensor | None = None,
    c: Any = None,
    *,
    y: Tensor | None = None,
    conditions: Sequence[Any] | None = None,
    orders: object = None,
    atol: float = 1e-9,
    kv_cache: bool = True,
    expect_kind: str | None = None,
    num_instances: int = 6,
    seed: int = 4,
) -> CheckResult:
    """Teacher-forced ``log_prob`` equals the sum of per-step log-probabilities collected along
    the sampling path (``stepwise_log_prob``, an independent implementation), same orders.

    Args:
        model: any :class:`fractalkit.Fractal` (checked in float64).
        x: int64 ``[N, *event_shape]``; default: ``num_instances`` random instances (``seed``).
        c: the condition for the N instances (any the conditioner takes); default: random
            example conditions (seed + 1) for a conditional model.
        y: int64 ``[N]`` labels, the class-label spelling of ``c``.
        conditions: the example conditions the default draws from (see
            :func:`check_normalisation`).
        orders: None (identity, shared random and, at an order-taking top level, per-instance
            orders), one spec, or a ``{name: spec}`` mapping.
        atol: bound on ``|log_prob - stepwise|`` in nats.
        kv_cache: decode with the KV cache (the sampling default).
        expect_kind: the ``LogProb.kind`` expected (``"exact"``/``"bound"``); None accepts both.
        num_instances, seed: the default data.

    Returns:
        :class:`CheckResult` with the largest ``|log_prob - stepwise|`` in nats.

    Raises:
        ContractError: the two paths differ, or a wrong kind, shape, dtype or a value >= 0.
    """
    check_model(model, "check_decomposition")
    model64 = float64_copy(model)
    c = batch_condition(c, y, "check_decomposition")
    if x is None:
        x = random_data(model64, num_instances, seed=seed)
        if c is None:
            c = random_conditions(model64, num_instances, seed=seed + 1, conditions=conditions)
    n = x.shape[0]
    specs = _default_order_specs(model64, n) if orders is None else _order_specs(model64, orders, seed=1)
    worst, parts = 0.0, []
    for name, spec in specs.items():
        with torch.no_grad():
            lp = model64.log_prob(x, c, orders=spec)
        steps = model64.stepwise_log_prob(x, c, orders=spec, kv_cache=kv_cache)
        kinds = (expect_kind,) if expect_kind else ("exact", "bound")
        if lp.kind not in kinds:
            raise ContractError(
                f"check_decomposition failed: orders={name}: log_prob's kind is {lp.kind!r}, "
                f"expected one of {kinds}. Likely cause: fixed orders must make every level exact"
            )
        if lp.value.shape != (n,) or steps.shape != (n,):
            raise ContractError(
                f"check_decomposition failed: orders={name}: shapes {list(lp.value.shape)} and "
                f"{list(steps.shape)}, expected [{n}]. Likely cause: a level does not reduce its "
                "children's log-probabilities to one number per instance"
            )
        if lp.value.dtype != torch.float64 or steps.dtype != torch.float64:
            raise ContractError(
                f"check_decomposition failed: orders={name}: dtypes {lp.value.dtype} and "
                f"{steps.dtype} from a float64 model. Likely cause: a component accumulates in "
                "float32 or casts its output"
            )
        if not bool((lp.value < 0).all()):
            raise fail(
                "check_decomposition", f"orders={name}: largest log_prob", float(lp.value.max()),
                "< 0", "a probability of 1 or more: logits not normalised over the values",
            )
        diff = float((lp.value - steps).abs().max()) if n else 0.0
        worst = max(worst, diff)
        parts.append(f"orders={name}: {diff:.3g}")
        if not diff <= atol:
            raise fail(
                "check_decomposition", f"orders={name}: largest |log_prob - stepwise_log_prob| "
                "in nats", diff, f"{atol:g}",
                "the training/scoring path and the decoding path compute different conditionals: "
                "a level's teacher-forced conditions see other children than decoding does (a "
                "causal mask or order mismatch), or the decoding loop mis-accumulates log-probs",
            )
    return CheckResult("check_decomposition", worst, atol, "; ".join(parts))


def check_orders_reach_levels(
    model: Fractal,
    x: Tensor | None = None,
    c: Any = None,
    *,
    y: Tensor | None = None,
    conditions: Sequence[Any] | None = None,
    min_gap: float = 1e-6,
    num_instances: int = 6,
    seed: int = 4,
) -> CheckResult:
    """For a model with an order-taking (MAR-like) level: ``log_prob`` depends on the order.

    Otherwise a check run under fixed orders would prove little (every order would be the same).

    Returns:
        :class:`CheckResult` with the largest ``|log_prob(identity) - log_prob(other order)|``.

    Raises:
        ContractError: no level takes orders, or the orders change nothing.
    """
    check_model(model, "check_orders_reach_levels")
    model64 = float64_copy(model)
    if not any(uses_orders(model64)):
        raise ContractError(
            "check_orders_reach_levels failed: no level of this model takes an order "
            "(uses_orders is False everywhere)"
        )
    c = batch_condition(c, y, "check_orders_reach_levels")
    if x is None:
        x = random_data(model64, num_instances, seed=seed)
        if c is None:
            c = random_conditions(model64, num_instances, seed=seed + 1, conditions=conditions)
    shared = fixed_orders(model64, seed=1)
    reverse = [None if o is None else torch.arange(len(o)).flip(0) for o in shared]
    with torch.no_grad():
        a = model64.log_prob(x, c, orders="identity").value
        b = model64.log_prob(x, c, orders=shared).value
        r = model64.log_prob(x, c, orders=reverse).value
    gap = max(float((a - b).abs().max()), float((a - r).abs().max()))
    if not gap > min_gap:
        raise fail(
            "check_orders_reach_levels", "largest change of log_prob across three orders", gap,
            f"> {min_gap:g}", "the level ignores the order it is given (it always decodes in one "
            "order), so order-dependent checks prove nothing",
        )
    return CheckResult("check_orders_reach_levels", gap, min_gap)
