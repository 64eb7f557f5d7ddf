"""Natural-image crops from the photographs that ship inside the scikit-image wheel.

No download: ``skimage.data``'s ``astronaut``, ``chelsea``, ``coffee``, ``rocket`` and
``hubble_deep_field`` are files inside the installed package. Crops are drawn at native
resolution with random horizontal flips, from numpy's ``default_rng(seed)`` (data code, not
library sampling: the same seed gives the same crops).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

#: The ``skimage.data`` photographs used, all RGB and shipped inside the wheel.
PHOTOS: tuple[str, ...] = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    """The photographs as uint8 ``[H, W, 3]`` arrays (loaded once)."""
    try:
        import skimage.data
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "fractalkit.data.natural needs scikit-image: pip install \"fractalkit[examples]\""
        ) from err
    photos = []
    for name in PHOTOS:
        img = np.asarray(getattr(skimage.data, name)())
        if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
            raise RuntimeError(f"skimage.data.{name}() is not a uint8 RGB image: {img.shape} {img.dtype}")
        photos.append(img)
    return tuple(photos)


def natural_image_crops(size: int, count: int, *, seed: int = 0) -> torch.Tensor:
    """Random square crops (with random horizontal flips) of scikit-image's sample photos.

    Each crop picks a photograph uniformly from :data:`PHOTOS`, a uniformly random position
    inside it and a horizontal flip with probability 1/2.

    Args:
        size: crop side in pixels, 1 to 300 (the smallest photograph is 300 pixels high).
        count: number of crops, >= 0.
        seed: seed of numpy's ``default_rng``; the same seed gives the same crops.

    Returns:
        uint8 ``[count, 3, size, size]`` (channels first, values 0-255).

    Raises:
        TypeError: ``size``, ``count`` or ``seed`` is not an int.
        ValueError: ``size`` or ``count`` is out of range.
        ImportError: scikit-image is not installed (``pip install "fractalkit[examples]"``).
    """
    for name, value in (("size", size), ("count", count), ("seed", seed)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"natural_image_crops: {name} must be an int, got {type(value).__name__}")
    photos = _photos()
    smallest = min(min(p.shape[:2]) for p in photos)
    if not 1 <= size <= smallest:
        raise ValueError(f"natural_image_crops: size must lie in [1, {smallest}], got {size}")
    if count < 0:
        raise ValueError(f"natural_image_crops: count must be >= 0, got {count}")
    rng = np.random.default_rng(seed)
    out = np.empty((count, size, size, 3), dtype=np.uint8)
    for i in range(count):
        img = photos[int(rng.integers(len(photos)))]
        top = int(rng.integers(img.shape[0] - size + 1))
        left = int(rng.integers(img.shape[1] - size + 1))
        crop = img[top : top + size, left : left + size]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out[i] = crop
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()  # [count, 3, size, size]
