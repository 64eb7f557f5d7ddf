"""Element positions and the decided-values canvas: one object, made only when something needs it.

Shape letters: R rows (top-level instances, both guidance halves while decoding), D elements of
a top-level instance, M rows a component sees, E elements of one of them, V values.

Two features need to know *where* in the top-level instance an element sits: a leaf that reads
it (slot kinds: :class:`fractalkit.leaves.SlotKindsLeaf`, which declares ``needs_positions``)
and a sampling constraint (``SampleOptions.constraint``), which also reads the values decided so
far. :class:`fractalkit.Fractal` then makes one :class:`Canvas` for the call; each level hands
its children their rows' view (:meth:`Canvas.at`), and a leaf tells it what it decided
(:meth:`Canvas.record`). Without either feature nothing is tracked (the context's ``canvas`` is
None).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


class Canvas:
    """The element positions of the rows a component sees and the values decided so far.

    Views made by :meth:`at` share the decided values (one canvas per call); only their
    positions differ.

    Args:
        positions: int64 ``[M, *event]``: each element's flat index ``row * D + position`` in
            the canvas.
        values: int64 ``[R, D]``, the top-level instances being decoded (undecided elements
            hold placeholders), or None when scoring (positions only).
        decided: bool ``[R, D]``, which canvas elements hold final values (with ``values``).
    """

    def __init__(self, positions: Tensor, values: Tensor | None = None, decided: Tensor | None = None) -> None:
        if (values is None) != (decided is None):
            raise ValueError("Canvas: give both values and decided, or neither")
        self.positions = positions
        self._values = values
        self._decided = decided

    @classmethod
    def of(cls, x: Tensor, known: Tensor | None = None) -> Canvas:
        """The canvas of a top-level batch: positions ``0 .. R * D - 1`` in ``x``'s shape.

        Args:
            x: int64 ``[R, *event]``.
            known: bool ``[R, *event]`` when decoding (the canvas starts as ``x``, with
                ``known`` decided); None when scoring.
        """
        positions = torch.arange(x.numel(), device=x.device).view(x.shape)
        if known is None:
            return cls(positions)
        rows, d = x.shape[0], math.prod(x.shape[1:])  # rows may be 0
        return cls(positions, x.reshape(rows, d).clone(), known.reshape(rows, d).clone())

    @property
    def num_elements(self) -> int:
        """D, elements of a top-level instance (decoding only)."""
        if self._values is None:
            raise ValueError("Canvas: a scoring canvas holds positions only")
        return self._values.shape[1]

    def at(self, positions: Tensor) -> Canvas:
        """The view of other rows (e.g. a level's children): same canvas, these positions.

        Args:
            positions: int64 ``[M', *event']``, a selection of this view's positions.
        """
        return Canvas(positions, self._values, self._decided)

    def flat_positions(self, rows: int) -> Tensor:
        """int64 ``[rows, E]``: this view's positions ``[rows, *event]``, one row per instance."""
        return self.positions.reshape(rows, math.prod(self.positions.shape[1:]))  # rows may be 0

    def record(self, positions: Tensor, values: Tensor) -> None:
        """Put decided values on the canvas, for the elements decided after them to read.

        Args:
            positions: int64 ``[M, e]`` flat canvas indices.
            values: int64 ``[M, e]``.
        """
        if self._values is None:
            return  # scoring: nothing is decided
        self._values.view(-1)[positions.reshape(-1)] = values.reshape(-1)
        self._decided.view(-1)[positions.reshape(-1)] = True

    def allowed(
        self,
        constraint: Callable[[Tensor, Tensor, Tensor], Tensor],
        positions: Tensor,
        num_values: int,
        mask: Tensor | None = None,
        *,
        owner: str = "leaf",
    ) -> Tensor:
        """The values ``constraint`` allows for the elements at ``positions``, given the canvas.

        Args:
            constraint: ``SampleOptions.constraint``.
            positions: int64 ``[M, e]`` flat canvas indices of the elements being decided.
            num_values: V.
            mask: bool ``[M, e, V]`` already allowed values (e.g. slot kinds), or None.
            owner: how errors name the caller.

        Returns:
            bool ``[M, e, V]`` (``mask`` and the constraint's answer).

        Raises:
            ValueError: the constraint returns something else, or allows no value somewhere.
        """
        d = self.num_elements
        rows = positions[:, 0] // d  # [M]: each row is one canvas row
        allowed = constraint(self._values[rows], self._decided[rows], positions % d)
        want = (*positions.shape, num_values)
        if not isinstance(allowed, Tensor) or allowed.dtype != torch.bool or tuple(allowed.shape) != want:
            raise ValueError(
                f"SampleOptions.constraint must return a bool tensor of shape {list(want)} "
                f"(rows, elements, values), got {getattr(allowed, 'dtype', type(allowed))} "
                f"{list(getattr(allowed, 'shape', []))}"
            )
        if mask is not None:
            allowed = allowed & mask
        if positions.shape[0] and not bool(allowed.any(-1).all()):
            raise ValueError(
                f"{owner}: the sampling constraint (with the slot kinds) allows no value for some "
                "element; it must allow at least one"
            )
        return allowed
