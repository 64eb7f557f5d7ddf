"""Channels: one child per entry of the leading axis (e.g. R, G, B of a pixel).

Shape letters: N batch, k = C children, C leading (channel) axis, ``*rest`` the other axes.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from fractalkit.partition.base import Partitioner, _shape_tuple
from fractalkit.registry import register

__all__ = ["Channels"]


@register("channels")
class Channels(Partitioner):
    """Split ``[N, C, *rest]`` along the leading event axis into C children of ``[1, *rest]``.

    The grid is ``(1, C)``: child ``j`` is channel ``j``.

    Args:
        event_shape: Shape ``(C, *rest)`` of one instance, or an int ``C`` for ``(C,)``.

    Raises:
        ValueError: if ``event_shape`` is empty or holds a non-positive size.

    Example:
        >>> p = Channels((3,))
        >>> p.child_shape, p.grid
        ((1,), (1, 3))
    """


    def __init__(self, event_shape: int | tuple[int, ...]) -> None:
        shape = _shape_tuple(type(self).__name__, "event_shape", event_shape)
        self.event_shape = shape
        self.child_shape = (1, *shape[1:])
        self.grid = (1, shape[0])

    def _split(self, x: Tensor) -> Tensor:
        return x.unsqueeze(2)  # [N, C, *rest] -> [N, C, 1, *rest]

    def _merge(self, children: Tensor) -> Tensor:
        return children.squeeze(2)  # [N, C, 1, *rest] -> [N, C, *rest]

    def config(self) -> dict[str, Any]:
        """``{"kind": "channels", "event_shape": [C, *rest]}``."""
        return {"kind": self.kind, "event_shape": list(self.event_shape)}
