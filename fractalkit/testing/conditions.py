"""Conditions for the kit's checks, for any conditioner: example conditions, batches of them,
and the class-label spellings (``y=``, ``label=``) the checks keep.

A *condition for one instance* is the conditioner's own batched form with N = 1: ``tensor([3])``
for :class:`fractalkit.ClassLabel`, float ``[1, F]`` for :class:`fractalkit.Vector`, a list
holding one ``[L]`` (tokens) or ``[L, F]`` (frames) tensor for :class:`fractalkit.Sequence`, and
whatever a user conditioner documents. The kit batches such conditions without knowing the
conditioner, so they must be built from three structures (nested freely):

- a tensor whose leading axis is N (rows are instances);
- a list of N per-instance items (e.g. variable-length sequences);
- a tuple (or ``NamedTuple``) of fields, each batched as above (e.g. Vector's
  ``(values, missing)``).

Shape letters: N instances, M example conditions, K classes, F features, L sequence length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from fractalkit.conditioners import (
    ClassLabelConditioner,
    SequenceConditioner,
    UnconditionalConditioner,
    VectorConditioner,
)
from fractalkit.fractal import Fractal

__all__ = [
    "batch_condition",
    "conditional",
    "default_conditions",
    "describe",
    "example_conditions",
    "join_conditions",
    "one_condition",
    "random_conditions",
    "repeat_condition",
    "take_conditions",
]

_STRUCTURES = (
    "a tensor with a leading axis of instances, a list with one item per instance, or a tuple "
    "of such fields"
)


def conditional(model: Fractal) -> bool:
    """Whether ``model`` reads a condition (its conditioner is not the unconditional one)."""
    return not isinstance(model.conditioner, UnconditionalConditioner)


def default_conditions(model: Fractal, count: int = 3) -> list[Any] | None:
    """Example conditions (each for one instance) for a built-in conditioner, None otherwise.

    - :class:`fractalkit.ClassLabel` ``(K)``: every label, ``tensor([k])`` for k < K.
    - :class:`fractalkit.Vector` ``(F)``: ``count`` float32 ``[1, F]`` vectors within about a standard
      deviation around the configured mean (fixed seed), so they differ clearly.
    - :class:`fractalkit.Sequence`: ``count`` sequences of lengths 1, 2, 3... (at most
      ``max_len``), tokens in ``[0, vocab)`` or float32 frames ``[L, F]`` (fixed seed).
    - no conditioner: ``[]``.
    """
    cond = model.conditioner
    g = torch.Generator().manual_seed(1234)
    if isinstance(cond, UnconditionalConditioner):
        return []
    if isinstance(cond, ClassLabelConditioner):
        return [torch.tensor([k]) for k in range(cond.num_classes)]
    if isinstance(cond, VectorConditioner):
        mean, std = cond.mean.float().cpu(), cond.std.float().cpu()
        return [(mean + 0.75 * std * torch.randn(cond.dim, generator=g))[None] for _ in range(count)]
    if isinstance(cond, SequenceConditioner):
        cfg = cond.config
        out = []
        for i in range(count):
            length = 1 + i % cfg.max_len
            if cfg.vocab:
                out.append([torch.randint(0, cfg.vocab, (length,), generator=g)])
            else:
                out.append([torch.randn(length, cfg.features, generator=g)])
        return out
    return None


def example_conditions(model: Fractal, conditions: Sequence[Any] | None, where: str) -> list[Any]:
    """The example conditions a check uses: the caller's, else :func:`default_conditions`.

    Raises:
        ValueError: a user conditioner and no ``conditions`` (the kit cannot invent them), or an
            empty list for a conditional model.
    """
    if conditions is not None:
        out = list(conditions)
        if conditional(model) and not out:
            raise ValueError(f"{where}: conditions is empty; give at least one example condition")
        if not conditional(model) and out:
            raise ValueError(f"{where}: the model is unconditional; give no conditions")
        return out
    out = default_conditions(model)
    if out is None:
        raise ValueError(
            f"{where}: the kit cannot invent conditions for {type(model.conditioner).__name__}; "
            "pass conditions=[...]: a few example conditions, each for one instance in the "
            f"conditioner's batched form (N = 1), built from {_STRUCTURES}"
        )
    return out


def join_conditions(conditions: Sequence[Any]) -> Any:
    """One condition for all the instances of ``conditions`` (concatenated in order)."""
    first = conditions[0]
    if isinstance(first, Tensor):
        try:
            return torch.cat(list(conditions))
        except RuntimeError as err:
            raise ValueError(f"fractalkit.testing: example conditions do not batch together: {err}") from err
    if isinstance(first, list):
        return [item for c in conditions for item in c]
    if isinstance(first, tuple):
        fields = [join_conditions([c[i] for c in conditions]) for i in range(len(first))]
        return type(first)(*fields) if hasattr(first, "_fields") else tuple(fields)
    raise TypeError(
        f"fractalkit.testing: cannot batch a condition of type {type(first).__name__}; build "
        f"example conditions from {_STRUCTURES}"
    )


def take_conditions(c: Any, index: Tensor) -> Any:
    """The instances ``index`` (int64 ``[N]``) of a batched condition ``c``."""
    if isinstance(c, Tensor):
        return c[index.to(c.device)]
    if isinstance(c, list):
        return [c[i] for i in index.tolist()]
    if isinstance(c, tuple):
        fields = [take_conditions(f, index) for f in c]
        return type(c)(*fields) if hasattr(c, "_fields") else tuple(fields)
    raise TypeError(
        f"fractalkit.testing: cannot index a condition of type {type(c).__name__}; build "
        f"conditions from {_STRUCTURES}"
    )


def repeat_condition(c: Any, n: int) -> Any:
    """``n`` copies of a condition for one instance (None stays None)."""
    return None if c is None else take_conditions(c, torch.zeros(n, dtype=torch.long))


def random_conditions(
    model: Fractal, n: int, *, seed: int = 0, conditions: Sequence[Any] | None = None
) -> Any:
    """A condition for ``n`` instances, each a uniformly drawn example condition (None for an
    unconditional model). For class labels with the defaults these are the labels of
    :func:`~fractalkit.testing.support.random_labels` (same seed, same draws)."""
    if not conditional(model):
        return None
    examples = example_conditions(model, conditions, "random_conditions")
    g = torch.Generator().manual_seed(seed)
    return take_conditions(join_conditions(examples), torch.randint(0, len(examples), (n,), generator=g))


def one_condition(model: Fractal, c: Any, y: int | None, where: str) -> Any:
    """A condition for one instance from ``c`` (any condition; an int is a class label) or the
    class-label spelling ``y`` (an int); None for neither."""
    if y is not None:
        if c is not None:
            raise ValueError(f"{where}: give the condition as c or as y (a class label), not both")
        c = y
    if isinstance(c, int) and not isinstance(c, bool):
        return torch.tensor([c])
    return c


def batch_condition(c: Any, y: Any, where: str) -> Any:
    """The condition for N instances from ``c`` or its class-label spelling ``y`` (not both)."""
    if y is not None:
        if c is not None:
            raise ValueError(f"{where}: give the condition as c or as y (class labels), not both")
        return y
    return c


def describe(c: Any, width: int = 60) -> str:
    """A short text for a condition in a failure message: ``y=3`` for one integer label,
    ``c=None (null)``, or ``c=<values>`` cut to ``width`` characters."""
    if c is None:
        return "c=None (null)"
    if isinstance(c, Tensor) and c.numel() == 1 and c.dim() == 1 and not c.is_floating_point():
        return f"y={int(c)}"
    text = _values(c)
    return "c=" + (text if len(text) <= width else text[: width - 3] + "...")


def _values(c: Any) -> str:
    if isinstance(c, Tensor):
        return str(c.tolist())
    if isinstance(c, list | tuple):
        return "[" + ", ".join(_values(item) for item in c) + "]"
    return repr(c)
