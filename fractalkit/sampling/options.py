"""Deprecated alias: the sampling options and the decoding/scoring contexts moved under the
protocol (:mod:`fractalkit.protocol.options`, :mod:`fractalkit.protocol.contexts`).

Import them from :mod:`fractalkit.protocol` (or ``SampleOptions``/``Progress`` from
:mod:`fractalkit`); this module re-exports them so that existing imports keep working.
"""

from fractalkit.protocol.contexts import (
    DecodeContext,
    LevelPlan,
    OrderSpec,
    ScoreContext,
    ScoreMode,
)
from fractalkit.protocol.options import GuidanceSchedule, Progress, SampleOptions

__all__ = [
    "DecodeContext",
    "GuidanceSchedule",
    "LevelPlan",
    "OrderSpec",
    "Progress",
    "SampleOptions",
    "ScoreContext",
    "ScoreMode",
]
