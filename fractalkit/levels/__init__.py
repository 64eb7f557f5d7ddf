"""Levels: generators that split an instance into children and delegate each to their child.

The base :class:`Level` holds the contract and the decoding loop; the parts a level composes
are :class:`ChildInputs` (the input network) and :class:`SummaryPrefix` (the optional summary
prefix, the guiding pixel).
"""

from fractalkit.levels.ar import ARLevel, ARLevelConfig
from fractalkit.levels.base import Level, Step, StepPlan
from fractalkit.levels.inputs import ChildEmbedding, ChildInputs
from fractalkit.levels.mar import MARLevel, MARLevelConfig
from fractalkit.levels.summary import SummaryConfig, SummaryPrefix

__all__ = [
    "ARLevel",
    "ARLevelConfig",
    "ChildEmbedding",
    "ChildInputs",
    "Level",
    "MARLevel",
    "MARLevelConfig",
    "Step",
    "StepPlan",
    "SummaryConfig",
    "SummaryPrefix",
]
