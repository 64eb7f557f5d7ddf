"""ImagePatches: an image cut into a grid of non-overlapping patches.

Shape letters: N batch, k = (H / ph) * (W / pw) children, C channels, H/W image height/width,
ph/pw patch height/width, gh/gw grid rows/cols (H / ph, W / pw).
"""

from __future__ import annotations

from typing import Any

from einops import rearrange
from torch import Tensor

from fractalkit.partition.base import Partitioner, _pair, _positive_int
from fractalkit.registry import register

__all__ = ["ImagePatches"]


@register("image_patches")
class ImagePatches(Partitioner):
    """Cut ``[N, C, H, W]`` images into ``(H / ph) x (W / pw)`` patches of ``[C, ph, pw]``.

    Child ``j`` is the patch at grid row ``j // gw``, column ``j % gw`` (raster order).
    Flattening one child ``[C, ph, pw]`` puts element ``(channel, row, col)`` at index
    ``channel * ph * pw + row * pw + col``: the layout of the original FractalGen ``patchify``
    (``nchpwq -> nhwcpq``), which ported weights rely on.

    Args:
        size: Image size ``H`` (square) or ``(H, W)``.
        patch: Patch size ``ph`` (square) or ``(ph, pw)``; must divide ``size``.
        channels: Number of channels ``C``.

    Raises:
        ValueError: if a size is not a positive int or ``patch`` does not divide ``size``.

    Example:
        >>> p = ImagePatches(size=8, patch=4, channels=3)
        >>> p.event_shape, p.child_shape, p.grid
        ((3, 8, 8), (3, 4, 4), (2, 2))
    """


    def __init__(
        self, size: int | tuple[int, int], patch: int | tuple[int, int], channels: int = 3
    ) -> None:
        name = type(self).__name__
        h, w = _pair(name, "size", size)
        ph, pw = _pair(name, "patch", patch)
        c = _positive_int(name, "channels", channels)
        if h % ph or w % pw:
            raise ValueError(
                f"{name}: size {_show(size, h, w)} is not divisible by patch {_show(patch, ph, pw)};"
                " choose a patch size that divides the image"
            )
        self.size = (h, w)
        self.patch = (ph, pw)
        self.channels = c
        self.event_shape = (c, h, w)
        self.child_shape = (c, ph, pw)
        self.grid = (h // ph, w // pw)

    def _split(self, x: Tensor) -> Tensor:
        ph, pw = self.patch
        # [N, C, H, W] -> [N, k, C, ph, pw], children in raster order of the (gh, gw) grid
        return rearrange(x, "n c (gh ph) (gw pw) -> n (gh gw) c ph pw", ph=ph, pw=pw)

    def _merge(self, children: Tensor) -> Tensor:
        gh, gw = self.grid
        # [N, k, C, ph, pw] -> [N, C, H, W]
        return rearrange(children, "n (gh gw) c ph pw -> n c (gh ph) (gw pw)", gh=gh, gw=gw)

    @property
    def summary_shape(self) -> tuple[int]:
        """``(C,)``: an image block is summarised by its mean per channel."""
        return (self.channels,)

    def summary(self, x: Tensor) -> Tensor:
        """Per-channel mean of each image ``[N, C]``: the guiding pixel before rounding.

        Integer values are averaged in float64 (exact before rounding); floating values in
        their own dtype, over columns then rows, as the original FractalGen averages its
        normalised images.
        """
        self._check(x, "x", self.event_shape, "summary")
        if x.dtype.is_floating_point:
            return x.mean(-1).mean(-1)
        return x.flatten(2).double().mean(-1)

    def config(self) -> dict[str, Any]:
        """``{"kind": "image_patches", "size": [H, W], "patch": [ph, pw], "channels": C}``."""
        return {
            "kind": self.kind,
            "size": list(self.size),
            "patch": list(self.patch),
            "channels": self.channels,
        }


def _show(given: object, a: int, b: int) -> str:
    # Echo the user's own spelling for a square size ("30"), else "30x32".
    return str(a) if isinstance(given, int) else f"{a}x{b}"
