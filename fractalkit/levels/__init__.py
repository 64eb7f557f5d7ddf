"""Levels: generators that split an instance into children and delegate each to their child."""

from fractalkit.levels.ar import ARLevel, ARLevelConfig
from fractalkit.levels.base import ChildEmbedding, Level, Step, StepPlan
from fractalkit.levels.mar import MARLevel, MARLevelConfig

__all__ = [
    "ARLevel",
    "ARLevelConfig",
    "ChildEmbedding",
    "Level",
    "MARLevel",
    "MARLevelConfig",
    "Step",
    "StepPlan",
]
