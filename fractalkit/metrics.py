"""Deprecated alias of :mod:`fractalkit.imagenet.metrics` (the image metrics moved into the
ImageNet wing); import from there. Re-exports its public names with a DeprecationWarning."""

import warnings

from fractalkit.imagenet.metrics import *  # noqa: F403
from fractalkit.imagenet.metrics import __all__  # noqa: F401

warnings.warn(
    "fractalkit.metrics moved to fractalkit.imagenet.metrics; import it from there",
    DeprecationWarning,
    stacklevel=2,
)
