"""Likelihood checks: normalisation over an enumerable support, decomposition (teacher-forced
``log_prob`` against the decoding path) and order dependence. Run on a float64 copy.

Shape letters: N instances, E elements, V values, C = V**E configurations, k children.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from fractalkit.fractal import Fractal
from fractalkit.testing.report import CheckResult, ContractError, fail
from fractalkit.testing.support import (
    check_model,
    fixed_orders,
    float64_copy,
    labels_of,
    partitioners,
    random_data,
    random_labels,
    support,
    uses_orders,
)

__all__ = ["check_decomposition", "check_normalisation", "check_orders_reach_levels", "is_bound"]


def _labels(model: Fractal, labels: object) -> list[int | None]:
    if labels == "all":
        return [None, *range(model.num_classes)] if model.num_classes else [None]
    return list(labels)  # type: ignore[call-overload]


def _order_specs(model: Fractal, orders: object, *, seed: int) -> dict[str, object]:
    """Named order specifications: given ones, or identity plus shared random permutations."""
    if isinstance(orders, Mapping):
        return dict(orders)
    if orders is not None:
        return {"given": orders}
    return {"identity": "identity", "shared": fixed_orders(model, seed=seed)}


def is_bound(model: Fractal) -> bool:
    """Whether ``log_prob`` under fixed orders is a bound (e.g. a guiding pixel), not exact."""
    x = random_data(model, 1)
    with torch.no_grad():
        return model.log_prob(x, random_labels(model, 1), orders="identity").kind == "bound"


def check_normalisation(
    model: Fractal,
    *,
    labels: object = "all",
    orders: object = None,
    atol: float = 1e-6,
    seed: int = 11,
) -> CheckResult:
    """The probabilities of every configuration sum to 1 (exact models) or to at most 1 (bounds).

    Enumerates the support (at most :data:`~fractalkit.testing.support.MAX_ENUMERABLE`
    configurations) and sums ``exp(log_prob)`` in float64, for every label (and none) and every
    order specification. For a class-conditional model it also checks that the label reaches
    the model (classes 0 and 1 give different distributions).

    Args:
        model: any :class:`fractalkit.Fractal` with an enumerable support.
        labels: ``"all"`` (None and every class) or a list of labels (None: unconditional).
        orders: None (``"identity"`` and :func:`fixed_orders` with ``seed``), one spec, or a
            ``{name: spec}`` mapping.
        atol: bound on ``|sum - 1|`` for exact models.
        seed: seed of the shared random orders.

    Returns:
        :class:`CheckResult` with the largest ``|sum - 1|`` (exact) or the largest sum (bound).

    Raises:
        ContractError: a sum off 1 (exact), above 1 or vanishing (bound), or labels ignored.
    """
    check_model(model, "check_normalisation")
    model64 = float64_copy(model)
    xs = support(model64)
    worst, parts = 0.0, []
    bound = False
    for y in _labels(model64, labels):
        for name, spec in _order_specs(model64, orders, seed=seed).items():
            with torch.no_grad():
                lp = model64.log_prob(xs, labels_of(y, len(xs)), orders=spec)
            mass = float(lp.value.logsumexp(0).exp())
            where = f"y={y}, orders={name}"
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
    if model64.num_classes >= 2 and not bound:  # the label reaches the model
        with torch.no_grad():
            per_class = [
                model64.log_prob(xs, labels_of(c, len(xs)), orders="identity").value for c in (0, 1)
            ]
        gap = float((per_class[0] - per_class[1]).abs().max())
        if not gap > 1e-3:
            raise fail(
                "check_normalisation", "largest |log p(x | y=0) - log p(x | y=1)|", gap, "> 1e-3",
                "the class condition never reaches the model (a level drops its condition), or "
                "the model is so close to uniform that no check has power (roughen it)",
            )
    return CheckResult("check_normalisation", worst, 1e-9 if bound else atol, "; ".join(parts))


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
    y: Tensor | None = None,
    *,
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
        y: int64 ``[N]`` labels; default: random labels (seed + 1) for a conditional model.
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
    if x is None:
        x = random_data(model64, num_instances, seed=seed)
        y = random_labels(model64, num_instances, seed=seed + 1) if y is None else y
    n = x.shape[0]
    specs = _default_order_specs(model64, n) if orders is None else _order_specs(model64, orders, seed=1)
    worst, parts = 0.0, []
    for name, spec in specs.items():
        with torch.no_grad():
            lp = model64.log_prob(x, y, orders=spec)
        steps = model64.stepwise_log_prob(x, y, orders=spec, kv_cache=kv_cache)
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
    y: Tensor | None = None,
    *,
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
    if x is None:
        x = random_data(model64, num_instances, seed=seed)
        y = random_labels(model64, num_instances, seed=seed + 1) if y is None else y
    shared = fixed_orders(model64, seed=1)
    reverse = [None if o is None else torch.arange(len(o)).flip(0) for o in shared]
    with torch.no_grad():
        a = model64.log_prob(x, y, orders="identity").value
        b = model64.log_prob(x, y, orders=shared).value
        c = model64.log_prob(x, y, orders=reverse).value
    gap = max(float((a - b).abs().max()), float((a - c).abs().max()))
    if not gap > min_gap:
        raise fail(
            "check_orders_reach_levels", "largest change of log_prob across three orders", gap,
            f"> {min_gap:g}", "the level ignores the order it is given (it always decodes in one "
            "order), so order-dependent checks prove nothing",
        )
    return CheckResult("check_orders_reach_levels", gap, min_gap)
