"""Deprecated: loaders for checkpoints made by other implementations.

- :mod:`fractalkit.compat.fractalgen`: an alias of :mod:`fractalkit.imagenet.convert` (the
  converter of the official FractalGen checkpoints moved into the ImageNet wing);
  ``python -m fractalkit.compat.fractalgen convert IN OUT`` still runs it.

The submodules are imported on first use, so ``python -m fractalkit.compat.fractalgen`` runs
the module once (importing it here would make ``runpy`` warn).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["fractalgen"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
