"""The abstract Partitioner: how one instance becomes k children and back.

Shape letters used in this package:
    N  batch (number of instances)
    k  number of children per instance (``num_children``)
    C  channels, H/W image height/width, ph/pw patch height/width
    L  sequence length, c chunk length

A partitioner is pure tensor code with no parameters. ``split`` maps ``[N, *event_shape]`` to
``[N, k, *child_shape]``; ``merge`` is its exact inverse (the composer refuses a partitioner
for which ``merge(split(x)) != x``). Partitioners also describe where each child sits on a 2-D
grid (``positions``: raster order of ``grid`` by default, overridable) and who its neighbours
are (``neighbours``, derived from the positions), so levels never need to know what the data is.
"""

from __future__ import annotations

import abc
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

__all__ = ["Partitioner"]


class Partitioner(abc.ABC):
    """Splits instances into a grid of children and merges them back, exactly.

    Subclasses set ``event_shape``, ``child_shape`` and ``grid`` in their constructor (after
    validating their arguments) and implement :meth:`split` and :meth:`merge` (the base class
    checks the shapes of their inputs before they run, so they see checked tensors) plus
    :meth:`config`; they may override :meth:`positions` to place the children on the grid in
    another order than raster order. The names ``_split``/``_merge`` of earlier releases still
    work as the two methods to implement.

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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A subclass implements split/merge under their public names; wrap them so that the
        # shapes are still checked before its code runs (as for the old _split/_merge hooks).
        for name in ("split", "merge"):
            own = cls.__dict__.get(name)
            if callable(own) and not getattr(own, "_shape_checked", False):
                setattr(cls, name, _shape_checked(own, name))

    def split(self, x: Tensor) -> Tensor:
        """Cut instances into children.

        Implement it in a subclass (the base class checks ``x``'s shape before calling it).

        Args:
            x: ``[N, *event_shape]``, any dtype (including bool).

        Returns:
            ``[N, k, *child_shape]`` with the same dtype and device; child ``j`` sits at
            ``positions()[j]`` on the grid (raster order by default: row ``j // cols``,
            column ``j % cols``).

        Raises:
            TypeError: if ``x`` is not a tensor.
            ValueError: if ``x`` is not ``[N, *event_shape]``.
        """
        self._check(x, "x", self.event_shape, "split")
        return self._split(x)

    def merge(self, children: Tensor) -> Tensor:
        """Put children back together; the exact inverse of ``split``.

        Implement it in a subclass (the base class checks the shape before calling it).

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

        Override it to place the children on the grid in another order than raster order
        (e.g. a snake order); :meth:`neighbours` and the levels' 2-D position encodings follow.
        Every child must sit on its own cell of ``grid``.

        Returns:
            int64 ``[k, 2]``: ``(row, col)`` of child ``j``; by default ``(j // cols, j % cols)``.
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
        # Computed on the CPU even under another default device (Fractal.load checks files on
        # the meta device, where no value can be read).
        device = torch.get_default_device()
        with torch.device("cpu"):
            table = self._neighbours()
        return table.to(device)  # where positions() is: the default device

    def _neighbours(self) -> Tensor:
        rows, cols = self.grid
        pos = self.positions().cpu()  # [k, 2]
        k = self.num_children
        if tuple(pos.shape) != (k, 2):
            raise ValueError(
                f"{type(self).__name__}.positions() must be int64 [{k}, 2], got {list(pos.shape)}"
            )
        row, col = pos[:, 0].long(), pos[:, 1].long()
        cell = row * cols + col  # [k]: the raster cell of each child
        inside = (row >= 0) & (row < rows) & (col >= 0) & (col < cols)
        if not bool(inside.all()) or cell.unique().numel() != k:
            raise ValueError(
                f"{type(self).__name__}.positions() must put every child on its own cell of the "
                f"{rows}x{cols} grid, got {pos.tolist()}"
            )
        child_at = torch.full((rows * cols,), -1, dtype=torch.long)  # [cells]: child or -1
        child_at[cell] = torch.arange(k)
        minus_one = torch.full_like(cell, -1)

        def at(ok: Tensor, target: Tensor) -> Tensor:
            return torch.where(ok, child_at[target.clamp(0, rows * cols - 1)], minus_one)

        top = at(row > 0, cell - cols)
        right = at(col < cols - 1, cell + 1)
        bottom = at(row < rows - 1, cell + cols)
        left = at(col > 0, cell - 1)
        return torch.stack([top, right, bottom, left], dim=1)  # [k, 4]

    @property
    def has_links(self) -> bool:
        """Whether :meth:`links` gives data-dependent neighbours (False: it returns None)."""
        return False

    def links(self, children: Tensor) -> Tensor | None:
        """Data-dependent neighbours of the children, beside the fixed grid :meth:`neighbours`.

        A level may condition a child on the outputs of the children linked to it (e.g. the
        MAR level's ``linked_neighbours``). A link must be readable from the *earlier-decided*
        side alone, so that a child's condition depends on visible children only: ``[n, j, i]``
        may be True only when i > j and child i's own values say that i and j are linked.

        Args:
            children: int64 ``[N, k, *child_shape]`` (or flattened ``[N, k, P]``).

        Returns:
            bool ``[N, k, k]`` (``[n, j, i]``: child i is linked to child j), or None when this
            partitioner defines no links (the default; see :attr:`has_links`).
        """
        return None

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
            "summary prefix (MARLevelConfig.summary) needs a partitioner that defines one, e.g. ImagePatches"
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

    def _split(self, x: Tensor) -> Tensor:
        """``[N, *event_shape] -> [N, k, *child_shape]`` on an already checked tensor.

        The name of earlier releases for what a subclass implements; implement :meth:`split`.
        """
        raise NotImplementedError(f"{type(self).__name__}: implement split(x) and merge(children)")

    def _merge(self, children: Tensor) -> Tensor:
        """``[N, k, *child_shape] -> [N, *event_shape]`` on an already checked tensor.

        The name of earlier releases for what a subclass implements; implement :meth:`merge`.
        """
        raise NotImplementedError(f"{type(self).__name__}: implement split(x) and merge(children)")

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


def _shape_checked(method: Callable[[Partitioner, Tensor], Tensor], name: str) -> Callable[[Partitioner, Tensor], Tensor]:
    """``method`` (a subclass's ``split`` or ``merge``) behind the base class's shape check."""

    @functools.wraps(method)
    def checked(self: Partitioner, t: Tensor) -> Tensor:
        if name == "split":
            self._check(t, "x", self.event_shape, "split")
        else:
            self._check(t, "children", (self.num_children, *self.child_shape), "merge")
        return method(self, t)

    checked._shape_checked = True  # type: ignore[attr-defined]
    return checked


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
