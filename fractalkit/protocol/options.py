"""What shapes a draw: the user's sampling options and the progress a callback receives.

These are part of the decoding contract (a :class:`fractalkit.protocol.DecodeContext` carries
the options down every level), so they live under the protocol; the procedures that act on them
(schedules, orders, random draws, guidance) are :mod:`fractalkit.sampling`'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor

from fractalkit.validation import check_finite_number

GuidanceSchedule = Literal["constant", "linear"]


def guidance_at(scale: float, schedule: GuidanceSchedule, progress: float) -> float:
    """Guidance scale at a top-level step.

    Args:
        scale: w, the full classifier-free guidance scale (1 = no guidance).
        schedule: ``"constant"`` (w throughout) or ``"linear"`` (1 + (w - 1) * progress).
        progress: fraction of the top level's children decided once this step is done, in (0, 1];
            the last step therefore uses the full scale.
    """
    if schedule == "constant":
        return scale
    if schedule == "linear":
        return 1.0 + (scale - 1.0) * progress
    raise ValueError(f"guidance_schedule: expected 'constant' or 'linear', got {schedule!r}")


@dataclass(frozen=True)
class Progress:
    """What a sampling callback receives after each step of the top level.

    Attributes:
        canvas: int64 ``[N, *event_shape]``, the partial sample (undecided elements are 0).
        decided: bool ``[N, *event_shape]``, which elements hold final values.
        step: 1-based index of the top-level step just finished.
        num_steps: top-level steps in all.
    """

    canvas: Tensor
    decided: Tensor
    step: int
    num_steps: int


@dataclass(frozen=True)
class SampleOptions:
    """Everything that shapes a draw, passed down every level as one object.

    Attributes:
        guidance: classifier-free guidance scale w (1.0 = none); needs a conditional model
            (any conditioner with a null condition) and a condition.
        guidance_schedule: ``"constant"``, or ``"linear"`` in the top level's progress (lower
            levels use the value the top level set, as the original does).
        temperature: T > 0; logits are *divided* by T (below 1 sharpens). The original FractalGen
            multiplies by its "temperature", so its published 1.02 is 1/1.02 here.
        filter_threshold: with guidance, values whose conditional probability is below this
            cannot be boosted (the paper's 1e-4); 0 disables the filter.
        steps: decoding steps per level, top first, one entry per level (the leaf excluded).
            ``None`` (or a None entry) means one child per step: the exact mode, in which MAR
            sampling draws exactly from the model that ``log_prob`` scores. AR levels always
            decide one child per step and ignore their entry.
        kv_cache: reuse keys and values across AR steps (False recomputes the prefix; same result).
        callback: called with a :class:`Progress` after every top-level step.
        constraint: restricts the values each leaf may draw, given what has been decoded so
            far (e.g. valence-aware decoding of molecules): called as
            ``constraint(canvas, decided, positions)`` with int64 ``canvas [M, D]`` (the
            partial top-level instances of the M leaf rows being decided, flattened; undecided
            elements hold placeholders), bool ``decided [M, D]`` and int64 ``positions [M, E]``
            (the flattened element positions, in ``[0, D)``, the leaf decides now), it returns
            bool ``[M, E, V]``, True where a value is allowed. The leaf renormalises over the
            allowed values (every row must allow at least one). An AR leaf (or E = 1) decides
            one element per call, so the canvas holds every element decided before it. The
            samples are then no longer draws from the model that ``log_prob`` scores. None: no
            constraint.
    """

    guidance: float = 1.0
    guidance_schedule: GuidanceSchedule = "constant"
    temperature: float = 1.0
    filter_threshold: float = 1e-4
    steps: Sequence[int | None] | None = None
    kv_cache: bool = True
    callback: Callable[[Progress], Any] | None = field(default=None, compare=False)
    constraint: Callable[[Tensor, Tensor, Tensor], Tensor] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("guidance", "temperature", "filter_threshold"):
            check_finite_number("SampleOptions", name, getattr(self, name))
        if not self.temperature > 0:
            raise ValueError(f"temperature: expected > 0, got {self.temperature}")
        if not self.guidance >= 0:
            raise ValueError(f"guidance: expected >= 0, got {self.guidance}")
        if self.guidance_schedule not in ("constant", "linear"):
            raise ValueError(
                f"guidance_schedule: expected 'constant' or 'linear', got {self.guidance_schedule!r}"
            )
        if not 0 <= self.filter_threshold < 1:
            raise ValueError(f"filter_threshold: expected in [0, 1), got {self.filter_threshold}")
        if self.constraint is not None and not callable(self.constraint):
            raise TypeError(f"constraint: expected a callable or None, got {type(self.constraint).__name__}")
        if self.callback is not None and not callable(self.callback):
            raise TypeError(
                f"SampleOptions: callback must be a callable taking a Progress, or None, got "
                f"{self.callback!r:.80} ({type(self.callback).__name__})"
            )
        if not isinstance(self.kv_cache, bool):
            raise TypeError(f"SampleOptions: kv_cache must be True or False, got {self.kv_cache!r}")
        if self.steps is not None:
            if isinstance(self.steps, str | bytes) or not isinstance(self.steps, Sequence):
                raise TypeError(
                    f"SampleOptions: steps must be a sequence with one entry per level, top first "
                    f"(e.g. steps=({self.steps!r:.20},) for one level, or steps=(64, 16)), or None; "
                    f"got {self.steps!r:.80} ({type(self.steps).__name__})"
                )
            steps = tuple(self.steps)
            for s in steps:
                if s is not None and (not isinstance(s, int) or isinstance(s, bool) or s < 1):
                    raise ValueError(f"steps: expected positive integers or None, got {steps}")
            object.__setattr__(self, "steps", steps)

    @classmethod
    def make(cls, options: SampleOptions | None = None, **overrides: Any) -> SampleOptions:
        """``options`` (or the defaults) with ``overrides`` applied; unknown names raise TypeError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(
                f"unknown sampling option(s) {unknown}; valid options are {sorted(names)}"
            )
        return dataclasses.replace(options or cls(), **overrides)
