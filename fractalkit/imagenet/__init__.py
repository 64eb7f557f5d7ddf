"""The ImageNet wing: the paper's five models, their presets, converter, releases and metrics.

- :mod:`fractalkit.imagenet.models`: ONE record per paper model (architecture, parameter
  count, published sampling settings with each figure's source, release address and size,
  training schedule) and the ImageNet constants (mean, std, red weight).
- :mod:`fractalkit.imagenet.presets`: named presets (the paper's, derived from the records, and
  small CPU ones).
- :mod:`fractalkit.imagenet.convert`: the original checkpoints to fractalkit
  (``fractalkit-convert-fractalgen convert IN OUT``).
- :mod:`fractalkit.imagenet.releases`: the releases ``Fractal.from_pretrained`` fetches by name,
  registered with :func:`fractalkit.hub.register_release` when this package is imported
  (``import fractalkit`` does).
- :mod:`fractalkit.imagenet.metrics`: FID, Inception Score, precision/recall of images.
- :mod:`fractalkit.imagenet.data`: image datasets (ImageNet-style folders, Tiny ImageNet).

The generic core never imports this package; it imports the core.
"""

from __future__ import annotations

import importlib
from typing import Any

from fractalkit.imagenet.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PAPER_MODELS,
    PaperModel,
    PublishedSampling,
    paper_model,
)
from fractalkit.imagenet.presets import PRESETS, Preset, TrainingRecipe, build_preset, get_preset
from fractalkit.imagenet.releases import register_paper_releases

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PAPER_MODELS",
    "PRESETS",
    "PaperModel",
    "Preset",
    "PublishedSampling",
    "TrainingRecipe",
    "build_preset",
    "get_preset",
    "paper_model",
]

# The converter, metrics and datasets load on first use: ``python -m fractalkit.imagenet.convert``
# must find the converter not yet imported, and the metrics need numpy/scipy.
_LAZY = ("convert", "metrics", "data")

register_paper_releases()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
