"""SequenceChunks: a sequence cut into consecutive chunks of equal length.

Shape letters: N batch, k = L / c children, L sequence length, c chunk length, ``*e`` the shape
of one element (``()`` for scalar tokens).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from fractalkit.partition.base import Partitioner, _positive_int, _shape_tuple
from fractalkit.registry import register

__all__ = ["SequenceChunks"]


@register("sequence_chunks")
class SequenceChunks(Partitioner):
    """Cut ``[N, L, *e]`` sequences into ``L / c`` consecutive chunks of ``[c, *e]``.

    The grid is ``(1, L / c)``: child ``j`` holds elements ``j * c`` to ``(j + 1) * c - 1``.

    Args:
        length: Sequence length ``L``.
        chunk: Chunk length ``c``; must divide ``length``.
        element_shape: Shape ``*e`` of one sequence element; ``()`` for scalar tokens.

    Raises:
        ValueError: if a size is not a positive int or ``chunk`` does not divide ``length``.

    Example:
        >>> p = SequenceChunks(length=12, chunk=4)
        >>> p.event_shape, p.child_shape, p.grid
        ((12,), (4,), (1, 3))
    """


    def __init__(self, length: int, chunk: int, element_shape: tuple[int, ...] = ()) -> None:
        name = type(self).__name__
        length = _positive_int(name, "length", length)
        chunk = _positive_int(name, "chunk", chunk)
        element = _shape_tuple(name, "element_shape", element_shape, allow_empty=True)
        if length % chunk:
            raise ValueError(
                f"{name}: length {length} is not divisible by chunk {chunk};"
                " choose a chunk length that divides the sequence length"
            )
        self.length = length
        self.chunk = chunk
        self.element_shape = element
        self.event_shape = (length, *element)
        self.child_shape = (chunk, *element)
        self.grid = (1, length // chunk)

    def _split(self, x: Tensor) -> Tensor:
        # [N, L, *e] -> [N, k, c, *e]
        return x.reshape(x.shape[0], self.num_children, self.chunk, *self.element_shape)

    def _merge(self, children: Tensor) -> Tensor:
        # [N, k, c, *e] -> [N, L, *e]
        return children.reshape(children.shape[0], self.length, *self.element_shape)

    def config(self) -> dict[str, Any]:
        """``{"kind": "sequence_chunks", "length": L, "chunk": c, "element_shape": [*e]}``."""
        return {
            "kind": self.kind,
            "length": self.length,
            "chunk": self.chunk,
            "element_shape": list(self.element_shape),
        }
