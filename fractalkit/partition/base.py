"""The abstract Partitioner: how one instance becomes k children and back.

Shape letters used in this package:
    N  batch (number of instances)
    k  number of children per instance (``num_children``)
    C  channels, H/W image height/width, ph/pw patch height/width
    L  sequence length, c chunk length

A partitioner is pure tensor code with no parameters. ``split`` maps ``[N, *event_shape]`` to
``[N, k, *child_shape]`` with the children in raster order of ``grid``; ``merge`` is its exact
inverse. Partitioners also describe where each child sits on a 2-D grid (``positions``) and who
its neighbours are (``neighbours``), so levels never need to know what the data is.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

__all__ = ["Partitioner"]


class Partitioner(abc.ABC):
    """Splits instances into a grid of children and merges them back, exactly.

    Subclasses set ``event_shape``, ``child_shape`` and ``grid`` in their constructor (after
    validating their arguments) and implement ``_split``/``_merge`` on tensors whose shapes have
    already been checked, plus ``config``.

    Attributes:
        kind: Registry key of the concrete class, e.g. ``"image_patches"``.
        event_shape: Shape of one instance, without the batch dimension.
        child_shape: Shape of one child, without the batch and child dimensions.
        grid: ``(rows, cols)`` of the child grid; ``rows * cols == num_children``. 1-D data
            uses ``(1, k)``.
    """

    kind: ClassVar[str]
    event_shape: tuple[int, ...]
    child_shape: tuple[int, ...]
    grid: tuple[int, int]

    @property
    def num_children(self) -> int:
        """Number of children k per instance (``rows * cols`` of the grid)."""
        return self.grid[0] * self.grid[1]

    @property
    def child_numel(self) -> int:
        """Number of elements in one child, ``prod(child_shape)``."""
        return math.prod(self.child_shape)

    def split(self, x: Tensor) -> Tensor:
        """Cut instances into children.

        Args:
            x: ``[N, *event_shape]``, any dtype (including bool).

        Returns:
            ``[N, k, *child_shape]`` with the same dtype and device, children in raster order
            of ``grid`` (child ``j`` sits at row ``j // cols``, column ``j % cols``).

        Raises:
            TypeError: if ``x`` is not a tensor.
            ValueError: if ``x`` is not ``[N, *event_shape]``.
        """
        self._check(x, "x", self.event_shape, "split")
        return self._split(x)

    def merge(self, children: Tensor) -> Tensor:
        """Put children back together; the exact inverse of ``split``.

        Args:
            children: ``[N, k, *child_shape]``, any dtype, children in raster order of ``grid``.

        Returns:
            ``[N, *event_shape]`` with the same dtype and device.

        Raises:
            TypeError: if ``children`` is not a tensor.
            ValueError: if ``children`` is not ``[N, k, *child_shape]``.
        """
        self._check(children, "children", (self.num_children, *self.child_shape), "merge")
        return self._merge(children)

    def positions(self) -> Tensor:
        """Grid position of every child.

        Returns:
            int64 ``[k, 2]``: ``(row, col)`` of child ``j``, i.e. ``(j // cols, j % cols)``.
            On the CPU; move it with ``.to(device)`` where needed.
        """
        rows, cols = self.grid
        index = torch.arange(rows * cols, dtype=torch.int64)
        return torch.stack([index // cols, index % cols], dim=1)  # [k, 2]

    def neighbours(self) -> Tensor:
        """Grid neighbours of every child, in the order top, right, bottom, left.

        Returns:
            int64 ``[k, 4]``: the child index of the (top, right, bottom, left) neighbour of
            child ``j``, or ``-1`` where that neighbour would be off the grid. On the CPU.
        """
        rows, cols = self.grid
        pos = self.positions()  # [k, 2]
        row, col = pos[:, 0], pos[:, 1]
        index = row * cols + col  # [k]
        minus_one = torch.full_like(index, -1)
        top = torch.where(row > 0, index - cols, minus_one)
        right = torch.where(col < cols - 1, index + 1, minus_one)
        bottom = torch.where(row < rows - 1, index + cols, minus_one)
        left = torch.where(col > 0, index - 1, minus_one)
        return torch.stack([top, right, bottom, left], dim=1)  # [k, 4]

    @property
    def summary_shape(self) -> tuple[int, ...] | None:
        """Shape of the summary of one instance (see :meth:`summary`); None: no summary defined.

        A level with a summary prefix (e.g. the guiding pixel of a MAR level) predicts the
        rounded summary first and conditions its children on it.
        """
        return None

    def summary(self, x: Tensor) -> Tensor:
        """A continuous summary of instances, e.g. the per-channel mean of an image block.

        Args:
            x: ``[N, *event_shape]`` values (integers or floats).

        Returns:
            ``[N, *summary_shape]``: float64 for integer ``x``, ``x``'s dtype for floating
            ``x``. It must commute with per-summary-entry affine maps of the values (a mean
            does), so that the summary of normalised values is the normalised summary.

        Raises:
            NotImplementedError: this partitioner defines no summary.
        """
        raise NotImplementedError(
            f"{type(self).__name__} defines no summary (summary_shape is None); a level with a "
            "summary prefix (guiding_pixel) needs a partitioner that defines one, e.g. ImagePatches"
        )

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """The constructor arguments as a JSON-serialisable dict, with the registry ``"kind"``.

        ``type(p)(**{k: v for k, v in p.config().items() if k != "kind"})`` rebuilds ``p``;
        ``partitioner_from_config(p.config())`` does the same through the registry.
        """

    def to_dict(self) -> dict[str, Any]:
        """What a saved model stores: :meth:`config` (the name every component shares)."""
        return self.config()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Partitioner:
        """Rebuild from :meth:`config` output (the ``"kind"`` entry is not checked).

        Raises:
            ValueError: the arguments do not fit the class.
        """
        kwargs = {k: v for k, v in data.items() if k != "kind"}
        try:
            return cls(**kwargs)
        except TypeError as err:  # unexpected or missing keyword: say which class and what it got
            raise ValueError(
                f"partitioner_from_config: bad arguments for {cls.__name__} ({cls.kind!r}): "
                f"{sorted(kwargs)}: {err}"
            ) from err

    @abc.abstractmethod
    def _split(self, x: Tensor) -> Tensor:
        """``[N, *event_shape] -> [N, k, *child_shape]`` on an already checked tensor."""

    @abc.abstractmethod
    def _merge(self, children: Tensor) -> Tensor:
        """``[N, k, *child_shape] -> [N, *event_shape]`` on an already checked tensor."""

    def _check(self, t: Tensor, name: str, expected: tuple[int, ...], method: str) -> None:
        # Never reshape what a user passed: the trailing shape must match exactly.
        where = f"{type(self).__name__}.{method}"
        if not isinstance(t, Tensor):
            raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != len(expected) + 1 or tuple(t.shape[1:]) != expected:
            want = ", ".join(["N", *map(str, expected)])
            raise ValueError(f"{where}: expected {name} of shape [{want}], got {list(t.shape)}")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "kind")
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Partitioner):
            return NotImplemented
        return self.config() == other.config()

    def __hash__(self) -> int:
        return hash(repr(self))


def _positive_int(owner: str, name: str, value: object) -> int:
    """Validate a positive int argument (bools rejected) and return it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    if value <= 0:
        raise ValueError(f"{owner}: {name} must be positive, got {value}")
    return value


def _shape_tuple(
    owner: str, name: str, value: object, *, allow_empty: bool = False
) -> tuple[int, ...]:
    """Validate a shape given as an int or a sequence of positive ints; return it as a tuple."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    if isinstance(value, torch.Size):
        value = tuple(value)
    if not isinstance(value, (tuple, list)):
        raise ValueError(f"{owner}: {name} must be an int or a tuple of ints, got {value!r}")
    if not value and not allow_empty:
        raise ValueError(f"{owner}: {name} must not be empty")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{owner}: {name} must contain positive ints, got {value!r}")
    return tuple(value)


def _pair(owner: str, name: str, value: object) -> tuple[int, int]:
    """Validate an int or an ``(h, w)`` pair of positive ints; return the pair."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    shape = _shape_tuple(owner, name, value)
    if len(shape) != 2:
        raise ValueError(f"{owner}: {name} must be an int or an (h, w) pair, got {value!r}")
    return shape[0], shape[1]
