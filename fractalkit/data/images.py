"""Deprecated alias of :mod:`fractalkit.imagenet.data` (the image datasets moved into the
ImageNet wing); import from there. Re-exports its public names with a DeprecationWarning."""

import warnings

from fractalkit.imagenet.data import *  # noqa: F403
from fractalkit.imagenet.data import __all__  # noqa: F401

warnings.warn(
    "fractalkit.data.images moved to fractalkit.imagenet.data; import it from there",
    DeprecationWarning,
    stacklevel=2,
)
