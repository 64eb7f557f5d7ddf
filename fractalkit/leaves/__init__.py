"""Leaves: generators with no child, modelling the smallest elements (a pixel's channels, a byte)."""

from fractalkit.leaves.base import Leaf
from fractalkit.leaves.categorical import CategoricalLeaf, CategoricalLeafConfig
from fractalkit.leaves.logistic import DiscretizedLogisticLeaf, DiscretizedLogisticLeafConfig
from fractalkit.leaves.rgb import RGBLeaf, RGBLeafConfig
from fractalkit.leaves.slots import (
    SlotCategoricalLeaf,
    SlotCategoricalLeafConfig,
    SlotKinds,
    SlotKindsLeaf,
)

__all__ = [
    "CategoricalLeaf",
    "CategoricalLeafConfig",
    "DiscretizedLogisticLeaf",
    "DiscretizedLogisticLeafConfig",
    "Leaf",
    "RGBLeaf",
    "RGBLeafConfig",
    "SlotCategoricalLeaf",
    "SlotCategoricalLeafConfig",
    "SlotKinds",
    "SlotKindsLeaf",
]
