"""The Generator contract and the contexts that travel down the levels.

Shape letters: N instances, T condition tokens, D condition width, E elements of an instance.

A *Generator* is a level or a leaf. Every generator answers, for integer data ``x [N, *event]``
and conditions ``cond [N, T, D]``:

- ``score``: a teacher-forced pass giving per-instance log-probabilities (a :class:`Score`),
  told how by a :class:`ScoreContext`;
- ``decode``: sampling / completion / forced decoding, step by step, returning values and the
  log-probability of what was decided, told how by a :class:`DecodeContext`.

:class:`AbstractGenerator` turns those two into ``log_prob``, ``sample`` and ``complete`` on
a bare generator, given ``cond [N, T, D]`` directly (exact scoring with identity orders, no
guidance). Training (``loss``: MAR masks, condition dropout), conditioners, random orders,
estimates and guidance are :class:`fractalkit.Fractal`'s, which composes generators.

Modules: :mod:`fractalkit.protocol.generator` (the contract, :class:`Score`, :class:`LogProb`),
:mod:`fractalkit.protocol.contexts` (:class:`DecodeContext`, :class:`ScoreContext`, and the
per-level :class:`LevelPlan` the composer resolves), :mod:`fractalkit.protocol.options`
(:class:`SampleOptions`, :class:`Progress`). The protocol imports nothing from
:mod:`fractalkit.sampling`; the sampling procedures may import it.
"""

from fractalkit.protocol.contexts import (
    DecodeContext,
    LevelPlan,
    OrderSpec,
    ScoreContext,
    ScoreMode,
)
from fractalkit.protocol.generator import (
    AbstractGenerator,
    BitsPerDim,
    Generator,
    Kind,
    LogProb,
    Score,
    accumulation_dtype,
    combine_kinds,
)
from fractalkit.protocol.options import GuidanceSchedule, Progress, SampleOptions, guidance_at

__all__ = [
    "AbstractGenerator",
    "BitsPerDim",
    "DecodeContext",
    "Generator",
    "GuidanceSchedule",
    "Kind",
    "LevelPlan",
    "LogProb",
    "OrderSpec",
    "Progress",
    "SampleOptions",
    "Score",
    "ScoreContext",
    "ScoreMode",
    "accumulation_dtype",
    "combine_kinds",
    "guidance_at",
]
