"""Exact laws over an enumerable support: what ``log_prob`` says, and what exact-mode sampling
must produce, with temperature, classifier-free guidance and its schedule.

The sampling law is computed independently of the decoding code: from the float64 joint
``exp(log_prob)`` under fixed orders, the conditional of each element given the ones decoded
before it (in :func:`~fractalkit.testing.support.decoding_order`) is a ratio of marginals; the
sampler's per-step law is then, by the documented semantics of :class:`fractalkit.SampleOptions`,

    softmax((l_u + w (l_c - l_u)) / T)

with ``l_c``/``l_u`` the conditional/unconditional log-conditionals, ``w`` the guidance scale at
the current top-level step (``1 + (w - 1) (s + 1) / k`` for the linear schedule) and the
low-probability filter applied first. The law of a whole instance is the product over steps.

Shape letters: C = V**E configurations, E elements, V values.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from fractalkit.fractal import Fractal
from fractalkit.testing.conditions import one_condition, repeat_condition
from fractalkit.testing.support import (
    check_model,
    decoding_order,
    float64_copy,
    partitioners,
    support,
    top_level_steps,
)

__all__ = ["likelihood_law", "log_likelihood_table", "sampling_law"]


def log_likelihood_table(
    model: Fractal, c: Any = None, orders: object = "identity", *, y: int | None = None
) -> Tensor:
    """``log_prob`` of every configuration of the support, in float64.

    Args:
        model: any :class:`fractalkit.Fractal` (a float64 copy is scored; the model is untouched).
        c: the condition of every row, given for one instance (see
            :mod:`fractalkit.testing.conditions`; an int is a class label), or None for the
            null (unconditional) condition.
        orders: passed to ``log_prob`` (fixed orders make a MAR model exact).
        y: the class-label spelling of ``c`` (an int).

    Returns:
        float64 ``[C]`` in the row order of :func:`~fractalkit.testing.support.support`.
    """
    check_model(model, "log_likelihood_table")
    c = one_condition(model, c, y, "log_likelihood_table")
    model64 = float64_copy(model)
    xs = support(model64)
    with torch.no_grad():
        return model64.log_prob(xs, repeat_condition(c, len(xs)), orders=orders).value


def likelihood_law(
    model: Fractal, c: Any = None, orders: object = "identity", *, y: int | None = None
) -> Tensor:
    """``exp(log_prob)`` over the support, float64 ``[C]`` (sums to 1 for an exact model).

    Arguments as in :func:`log_likelihood_table`.
    """
    return log_likelihood_table(model, c, orders, y=y).exp()


def _step_log_conditionals(joint: Tensor, shape: tuple[int, ...]) -> list[Tensor]:
    """Log-conditionals of each variable given the ones before it, from a log-joint.

    Args:
        joint: float64 ``[V] * E`` log-joint, axes already in decoding order.
        shape: ``(V,) * E``.

    Returns:
        E tensors; entry t has shape ``[V] * (t + 1)``: ``log p(x_t | x_<t)``.
    """
    e = len(shape)
    marginals = [joint]
    for _ in range(e - 1):  # log p(x_<=t-1) = logsumexp over x_t of log p(x_<=t), t = E-1..1
        marginals.append(marginals[-1].logsumexp(-1))
    marginals.reverse()  # marginals[t]: [V] * (t + 1)
    out = [marginals[0]]
    for t in range(1, e):
        step = marginals[t] - marginals[t - 1][..., None]
        # A prefix of probability 0 (a restricted support, e.g. slot kinds) has no conditional:
        # any finite one will do, the prefix's -inf keeps its configurations at probability 0.
        out.append(torch.where(torch.isnan(step), torch.zeros_like(step), step))
    return out


def _shaped(lc: Tensor, lu: Tensor | None, scale: float, temperature: float, threshold: float) -> Tensor:
    """Per-step log-law of a value: temperature, then the filter, then guidance (normalised)."""
    c = lc / temperature
    if lu is None:
        return c.log_softmax(-1)
    u = lu / temperature
    if threshold > 0:  # unlikely values cannot be boosted above the conditional's level
        unlikely = c.softmax(-1) < threshold
        level = c - c.amax(-1, keepdim=True) + u.amax(-1, keepdim=True)
        u = torch.where(unlikely, torch.maximum(u, level), u)
    return (u + scale * (c - u)).log_softmax(-1)


def sampling_law(
    model: Fractal,
    c: Any = None,
    *,
    y: int | None = None,
    orders: object = "identity",
    temperature: float = 1.0,
    guidance: float = 1.0,
    guidance_schedule: str = "constant",
    filter_threshold: float = 1e-4,
) -> Tensor:
    """The exact law of ``model.sample`` in exact mode (one child per step) over the support.

    With the defaults (T = 1, no guidance) it equals ``exp(log_prob)`` under ``orders``; with a
    temperature or guidance it is the product of the shaped per-step conditionals (see the
    module docstring), which no single ``log_prob`` call gives.

    Args:
        model: an exact model (not a guiding-pixel bound) with an enumerable support.
        c: the condition every sample is drawn for, given for one instance (an int is a class
            label), or None (the null condition); guidance needs one.
        y: the class-label spelling of ``c`` (an int).
        orders: one shared order per level (``"identity"`` or
            :func:`~fractalkit.testing.support.fixed_orders`); the same ``orders`` must be
            passed to ``sample``.
        temperature, guidance, guidance_schedule, filter_threshold: as in
            :class:`fractalkit.SampleOptions`.

    Returns:
        float64 ``[C]``, summing to 1, in the row order of
        :func:`~fractalkit.testing.support.support`.

    Raises:
        ValueError: guidance without a condition, or an unknown schedule.
    """
    c = one_condition(model, c, y, "sampling_law")
    if guidance != 1.0 and c is None:
        raise ValueError(
            "sampling_law: guidance needs a class label y or a condition c (the conditional half)"
        )
    if guidance_schedule not in ("constant", "linear"):
        raise ValueError(f"sampling_law: unknown guidance_schedule {guidance_schedule!r}")
    v = model.num_values
    e = math.prod(model.event_shape)
    shape = (v,) * e
    order = decoding_order(model, orders)  # [E]: flat element decided at step t
    inverse = order.argsort()

    def conditionals(condition: Any) -> list[Tensor]:
        joint = log_likelihood_table(model, condition, orders).view(shape)
        return _step_log_conditionals(joint.permute(*order.tolist()), shape)

    cond = conditionals(c)
    uncond = conditionals(None) if guidance != 1.0 else None
    # The top-level step each element is decided in sets the guidance scale (linear schedule).
    top = partitioners(model)[0]
    k = top.num_children
    owner = top.split(torch.arange(e).view(1, *model.event_shape)).reshape(k, -1)  # [k, E/k]
    top_step = torch.empty(e, dtype=torch.long)
    step_of_child = top_level_steps(model, orders)
    for child in range(k):
        top_step[owner[child]] = step_of_child[child]
    total = torch.zeros(shape, dtype=torch.float64)
    for t in range(e):
        s = int(top_step[order[t]])
        scale = guidance if guidance_schedule == "constant" else 1.0 + (guidance - 1.0) * (s + 1) / k
        lu = None if uncond is None else uncond[t]
        step = _shaped(cond[t], lu, scale, temperature, filter_threshold)  # [V] * (t + 1)
        total = total + step.view(*step.shape, *([1] * (e - t - 1)))
    return total.permute(*inverse.tolist()).reshape(-1).exp()

