"""Deprecated alias of :mod:`fractalkit.imagenet.presets` (the presets moved into the ImageNet
wing); import from there. Re-exports its public names with a DeprecationWarning."""

import warnings

from fractalkit.imagenet.presets import *  # noqa: F403
from fractalkit.imagenet.presets import __all__  # noqa: F401

warnings.warn(
    "fractalkit.presets moved to fractalkit.imagenet.presets; import it from there",
    DeprecationWarning,
    stacklevel=2,
)
