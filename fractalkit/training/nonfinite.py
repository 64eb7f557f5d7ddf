"""Stopping a run on a non-finite loss instead of training (and checkpointing) garbage."""

from __future__ import annotations

import math

from torch import Tensor

__all__ = ["NonFiniteLoss", "describe", "nonfinite_terms"]


class NonFiniteLoss(FloatingPointError):
    """A training step produced a NaN or infinite loss or gradient (the message names the step
    and the terms); the weights of that step were not applied."""


def nonfinite_terms(terms: dict[str, Tensor | float]) -> dict[str, float]:
    """The entries of ``terms`` (scalar tensors or floats) that are NaN or infinite, as floats.

    Args:
        terms: name -> scalar, e.g. ``{"total loss": out.total, "nll": out.nll,
            "gradient norm": gnorm}`` (one device sync per tensor).

    Returns:
        name -> value for the non-finite ones (empty when all are finite).
    """
    out = {}
    for name, value in terms.items():
        v = float(value.detach().float()) if isinstance(value, Tensor) else float(value)
        if not math.isfinite(v):
            out[name] = v
    return out


def describe(step: int, bad: dict[str, float]) -> str:
    """``"step 12: total loss = nan, gradient norm = inf"``."""
    return f"step {step}: " + ", ".join(f"{k} = {v}" for k, v in bad.items())


