"""How integer values become floats for linear embeddings: one object handed to every level.

Shape letters: N instances, k children, ``*event`` one instance, ``*child`` one child.

``float = (v / (V - 1) - mean) / std`` per element. A :class:`Fractal` gives one mean and std per
entry of the data's leading axis (per channel) or one for all; each level receives the
normalisation of *its* instance and derives its children's with :meth:`ValueNormalisation.child`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fractalkit.partition.base import Partitioner
from fractalkit.validation import check_declared_elements, check_finite_tensor


def _event_tensor(value: float | Sequence[float] | Tensor, event_shape: tuple[int, ...], name: str) -> Tensor:
    """A float32 CPU tensor of ``event_shape`` from a scalar or one value per leading-axis entry."""
    # Config constants: built on the CPU so that checks on them work under any default device
    # (e.g. ``with torch.device("meta"):``); buffers made from them follow ``model.to(...)``.
    t = torch.as_tensor(value, dtype=torch.float32, device="cpu")
    # Checked on the given values, never on the event-sized view: nothing here allocates in
    # proportion to the event (a file may declare any event shape).
    check_finite_tensor("Fractal", name, t, positive=name == "value_std")
    if t.dim() == 1 and len(event_shape) > 0:
        if t.numel() != event_shape[0]:
            raise ValueError(
                f"Fractal: {name} has {t.numel()} entries but the data's leading axis has "
                f"{event_shape[0]} (give one value, or one per channel)"
            )
        t = t.view(-1, *([1] * (len(event_shape) - 1)))
    elif t.dim() != 0 and tuple(t.shape) != tuple(event_shape):
        raise ValueError(f"Fractal: {name} must be a number or a list of numbers, got {value!r}")
    return t.expand(event_shape)  # a view: no memory per element


def _is_uniform(t: Tensor) -> bool:
    """Whether ``t`` is one value broadcast over its shape (a view made by ``expand``)."""
    return t.numel() <= 1 or all(stride == 0 for stride in t.stride())


@dataclass(frozen=True)
class ValueNormalisation:
    """Per-element mean and std of one instance's values (after scaling to ``[0, 1]``).

    Attributes:
        mean: float32 ``[*event]`` (usually a broadcast view of one value or one per channel,
            so no memory per element).
        std: float32 ``[*event]``, positive.
    """

    mean: Tensor
    std: Tensor

    @classmethod
    def of(
        cls,
        event_shape: tuple[int, ...],
        mean: float | Sequence[float] | Tensor = 0.5,
        std: float | Sequence[float] | Tensor = 0.5,
    ) -> ValueNormalisation:
        """From a number or one value per leading-axis entry (channel), for ``event_shape``.

        Raises:
            ValueError: wrong number of entries, or a std that is not positive (checked on the
                values given, not on the event: nothing event-sized is allocated).
            fractalkit.validation.DeclaredSizeError: while a file is being loaded, an event
                larger than the file can describe.
        """
        check_declared_elements("an event shape", math.prod(event_shape))
        m = _event_tensor(mean, tuple(event_shape), "value_mean")
        s = _event_tensor(std, tuple(event_shape), "value_std")  # positive: checked above
        return cls(m, s)

    def child(self, partitioner: Partitioner, where: str = "a level") -> ValueNormalisation:
        """The normalisation every child of ``partitioner`` shares.

        Raises:
            ValueError: the children would need different normalisations (e.g. a mean per
                channel with a partitioner that splits the channels).
        """
        if _is_uniform(self.mean) and _is_uniform(self.std):  # one value: the same for every
            # child, and the child's is a view (the split of a constant is that constant)
            shape = tuple(partitioner.child_shape)
            return ValueNormalisation(
                self.mean.reshape(-1)[:1].reshape(()).expand(shape),
                self.std.reshape(-1)[:1].reshape(()).expand(shape),
            )
        m = partitioner.split(self.mean[None].contiguous())  # [1, k, *child]
        s = partitioner.split(self.std[None].contiguous())
        if not (bool((m == m[:, :1]).all()) and bool((s == s[:, :1]).all())):
            raise ValueError(
                f"Fractal: {where}'s children would need different value normalisations; "
                "give value_mean/value_std per channel (the leading axis) only"
            )
        return ValueNormalisation(m[0, 0], s[0, 0])

    def summary(self, partitioner: Partitioner) -> ValueNormalisation:
        """The normalisation of ``partitioner``'s summary entries (e.g. per channel)."""
        if _is_uniform(self.mean) and _is_uniform(self.std) and partitioner.summary_shape is not None:
            # the summary of a constant is that constant: no event-sized copy
            shape = tuple(partitioner.summary_shape)
            return ValueNormalisation(
                self.mean.reshape(-1)[:1].reshape(()).expand(shape),
                self.std.reshape(-1)[:1].reshape(()).expand(shape),
            )
        m = partitioner.summary(self.mean[None].double())[0].float()  # exact: a mean of equal values
        s = partitioner.summary(self.std[None].double())[0].float()
        return ValueNormalisation(m, s)

    def apply(self, values: Tensor, num_values: int, dtype: torch.dtype) -> Tensor:
        """Values ``[..., *shape]`` (integers, or floats on the same scale) as normalised floats."""
        scaled = values.to(dtype) / (num_values - 1)
        return (scaled - self.mean.to(device=values.device, dtype=dtype)) / self.std.to(
            device=values.device, dtype=dtype
        )
