"""Tiny enumerable data spaces for exactness tests: every configuration of a small event shape.

Shape letters: E elements of one instance (``prod(event_shape)``), V values per element.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

#: Refuse to enumerate more configurations than this (V**E grows fast).
MAX_CONFIGURATIONS = 1 << 20


def num_configurations(event_shape: Sequence[int], num_values: int) -> int:
    """``V**E``: how many instances of ``event_shape`` with values in ``[0, V)`` exist.

    Args:
        event_shape: shape of one instance, e.g. ``(1, 2, 2)``.
        num_values: V >= 1.

    Returns:
        The count as a Python int.

    Raises:
        TypeError: ``event_shape`` is not a sequence of ints.
        ValueError: a non-positive size in ``event_shape`` or ``num_values`` < 1.
    """
    shape = _check_shape(event_shape)
    if isinstance(num_values, bool) or not isinstance(num_values, int) or num_values < 1:
        raise ValueError(f"num_values: expected a positive integer, got {num_values!r}")
    return num_values ** math.prod(shape)


def all_configurations(
    event_shape: Sequence[int], num_values: int, *, device: torch.device | str | None = None
) -> Tensor:
    """Every instance of ``event_shape`` with values in ``[0, V)``, in lexicographic order.

    Row i holds the base-V digits of i (most significant digit first) laid out over the
    flattened event, so row 0 is all zeros and the last row is all ``V - 1``.

    Args:
        event_shape: shape of one instance, e.g. ``(1, 2, 2)`` for a 2x2 one-channel image.
        num_values: V, values per element.
        device: where to put the result (default: CPU).

    Returns:
        int64 ``[V**E, *event_shape]``.

    Raises:
        TypeError: ``event_shape`` is not a sequence of ints.
        ValueError: a non-positive size or ``num_values``, or more than ``MAX_CONFIGURATIONS`` rows.

    Example:
        >>> all_configurations((2,), 3).tolist()
        [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2], [2, 0], [2, 1], [2, 2]]
    """
    shape = _check_shape(event_shape)
    count = num_configurations(shape, num_values)
    if count > MAX_CONFIGURATIONS:
        raise ValueError(
            f"all_configurations: {num_values}**{math.prod(shape)} = {count} configurations of "
            f"event_shape {list(shape)} exceed the limit of {MAX_CONFIGURATIONS}"
        )
    e = math.prod(shape)
    index = torch.arange(count, dtype=torch.int64, device=device)
    powers = num_values ** torch.arange(e - 1, -1, -1, dtype=torch.int64, device=device)  # [E]
    digits = (index[:, None] // powers[None, :]) % num_values  # [V**E, E]
    return digits.view(count, *shape)


def configuration_index(x: Tensor, num_values: int) -> Tensor:
    """The row of :func:`all_configurations` that equals each instance: the inverse map.

    Args:
        x: integer ``[N, *event_shape]`` with values in ``[0, V)``.
        num_values: V.

    Returns:
        int64 ``[N]`` in ``[0, V**E)``.

    Raises:
        TypeError: ``x`` is not an integer tensor.
        ValueError: ``x`` has no batch dimension or holds values outside ``[0, V)``.
    """
    if not isinstance(x, Tensor) or x.dtype.is_floating_point or x.dtype == torch.bool:
        raise TypeError(f"x: expected an integer tensor, got {getattr(x, 'dtype', type(x))}")
    if x.dim() < 1:
        raise ValueError(f"x: expected shape [N, *event_shape], got {list(x.shape)}")
    flat = x.reshape(x.shape[0], -1).long()
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= num_values):
        raise ValueError(
            f"x: values must lie in [0, {num_values}), got min {int(flat.min())} and max "
            f"{int(flat.max())}"
        )
    e = flat.shape[1]
    powers = num_values ** torch.arange(e - 1, -1, -1, dtype=torch.int64, device=x.device)
    return (flat * powers).sum(-1)


def _check_shape(event_shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(event_shape)
    except TypeError:
        raise TypeError(f"event_shape: expected a sequence of positive ints, got {event_shape!r}") from None
    if any(isinstance(s, bool) or not isinstance(s, int) for s in shape):
        raise TypeError(f"event_shape: expected a sequence of ints, got {shape!r}")
    if any(s < 1 for s in shape):
        raise ValueError(f"event_shape: expected positive ints, got {list(shape)}")
    return shape
