"""Deprecated alias of :mod:`fractalkit.imagenet.convert` (the FractalGen converter moved into
the ImageNet wing); import from there. ``python -m fractalkit.compat.fractalgen convert IN OUT``
keeps working (as does the ``fractalkit-convert-fractalgen`` command)."""

import sys
import warnings

from fractalkit.imagenet.convert import *  # noqa: F403
from fractalkit.imagenet.convert import __all__, main  # noqa: F401

if __name__ == "__main__":  # run as a command: no warning, the same main()
    sys.exit(main())

warnings.warn(
    "fractalkit.compat.fractalgen moved to fractalkit.imagenet.convert; import it from there",
    DeprecationWarning,
    stacklevel=2,
)
